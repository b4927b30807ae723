"""Print (or, with --write, splice into README.md) the references generated from the schemas:
the dump/batch fields (sensor/schema.py) and the database tables (sensor/store/schema.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sensor.schema import field_reference_markdown  # noqa: E402
from sensor.features import FEATURES  # noqa: E402
from sensor.store.schema import reference_markdown  # noqa: E402


def features_markdown() -> str:
    rows = "\n".join(f"| `{name}` | {doc} |" for name, doc in FEATURES.items())
    return f"| feature column | meaning |\n|---|---|\n{rows}\n"


SECTIONS = (("field-reference", field_reference_markdown), ("store-reference", reference_markdown),
            ("rule-features", features_markdown))
README = Path(__file__).resolve().parent.parent / "README.md"


def spliced(readme: str) -> str:
    for name, generate in SECTIONS:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        head, rest = readme.split(begin, 1)
        _, tail = rest.split(end, 1)
        readme = f"{head}{begin}\n{generate()}{end}{tail}"
    return readme


if __name__ == "__main__":
    if "--write" in sys.argv:
        README.write_text(spliced(README.read_text()))
    else:
        sys.stdout.write("".join(generate() for _, generate in SECTIONS))
