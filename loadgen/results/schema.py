"""Print the JSON Schema of the result format, generated from the Structs.

``python -m loadgen.results.schema > docs/result-schema.json`` regenerates the committed copy
(a test fails while it differs from the code).
"""

from __future__ import annotations

import json

from loadgen.results.run import json_schema


def main() -> None:
    print(json.dumps(json_schema(), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
