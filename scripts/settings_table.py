"""Rewrite the settings table of README.md from caducee.config (run after adding a setting)."""

from pathlib import Path

from caducee.config import describe_settings

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- settings table -->", "<!-- end settings table -->"

rows = ["| TOML key | environment variable | default | meaning |", "|---|---|---|---|"]
rows += [f"| `{key}` | `{env}` | `{default}` | {help} |" for key, env, default, help in describe_settings()]
text = README.read_text(encoding="utf-8")
head, _, rest = text.partition(BEGIN)
_, _, tail = rest.partition(END)
README.write_text(f"{head}{BEGIN}\n" + "\n".join(rows) + f"\n{END}{tail}", encoding="utf-8")
