"""What an account is, for the ledger and the hooks alike: its wallet class and its flag bits.

Both ``engine.ledger`` and the hooks import these; neither imports the other for them.
"""

from __future__ import annotations

import numpy as np

#: Bits of the per-account ``flags`` column; hooks own the meaning of the bits they set.
FLAG_FROZEN = np.uint8(1)
FLAG_BLACKLISTED = np.uint8(2)

#: Wallet classes: 1-4 are e-CNY's personal wallet classes (1 = fully verified, 4 = anonymous);
#: 0 is an institutional (merchant or corporate) wallet, outside the personal-wallet caps.
WALLET_CLASSES = (0, 1, 2, 3, 4)
