"""What an account is, for the ledger and the hooks alike: its wallet class and its flag bits.

Both ``engine.ledger`` and the hooks import these; neither imports the other for them.

The wallet class and the flags share one byte per account (``Ledger.flags``): bits 0-4 are flags
(hooks own the bits they set, and change them with ``|=`` and ``&= ~bit``, which leave the other
bits alone), bits 5-7 the wallet class (0-4 needs 3 bits).
"""

from __future__ import annotations

import numpy as np

#: Bits of the per-account ``flags`` byte; hooks own the meaning of the bits they set.
FLAG_FROZEN = np.uint8(1)
FLAG_BLACKLISTED = np.uint8(2)
#: The flag bits (0-4) and where the wallet class starts (bits 5-7) in the same byte.
FLAG_BITS = np.uint8(0x1F)
CLASS_SHIFT = np.uint8(5)

#: Wallet classes: 1-4 are e-CNY's personal wallet classes (1 = fully verified, 4 = anonymous);
#: 0 is an institutional (merchant or corporate) wallet, outside the personal-wallet caps.
WALLET_CLASSES = (0, 1, 2, 3, 4)


def class_of_bits(bits: np.ndarray) -> np.ndarray:
    """Wallet class (uint8) of each account byte."""
    return bits >> CLASS_SHIFT


def bits_of_class(wallet_class: int | np.ndarray) -> np.ndarray:
    """Account bytes holding ``wallet_class`` and no flags (uint8)."""
    return np.left_shift(np.asarray(wallet_class, dtype=np.uint8), CLASS_SHIFT)
