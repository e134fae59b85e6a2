#!/usr/bin/python3
"""A desktop application for the desktop tests: a one-window text editor in Tk.

`desktop_editor.py FILE` shows FILE (empty if it does not exist) in a text area that has the
keyboard's focus; Ctrl+S writes the text back to FILE, and the title then says "saved". It
talks to nothing but its X display, so what it changes on disk is what the tests typed.
"""

import sys
import tkinter
from pathlib import Path


def main() -> None:
    path = Path(sys.argv[1])
    root = tkinter.Tk()
    root.title(f"editor {path.name}")
    root.geometry("900x600+0+0")
    area = tkinter.Text(root, undo=True)
    area.pack(fill="both", expand=True)
    if path.exists():
        area.insert("1.0", path.read_text())

    def save(_event: object = None) -> str:
        path.write_text(area.get("1.0", "end-1c"))
        root.title(f"editor {path.name} saved")
        return "break"

    area.bind("<Control-s>", save)
    root.after(100, area.focus_force)
    root.mainloop()


if __name__ == "__main__":
    main()
