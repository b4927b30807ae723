"""Print (or, with --write, splice into README.md) the field reference generated from sensor/schema.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sensor.schema import field_reference_markdown  # noqa: E402

BEGIN, END = "<!-- field-reference:begin -->", "<!-- field-reference:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def spliced(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{field_reference_markdown()}{END}{tail}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        README.write_text(spliced(README.read_text()))
    else:
        sys.stdout.write(field_reference_markdown())
