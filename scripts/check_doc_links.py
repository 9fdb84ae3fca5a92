#!/usr/bin/python3
"""Check that every relative link in README.md and docs/*.md points at a file or directory
that exists in the repository (anchors are not checked; http(s) and mailto links are
skipped), and that every Markdown file named in the text (`docs/design.md`, cluster.md)
exists beside the document, under docs/ or at the root: a renamed document (DESIGN.md
became docs/design.md) leaves no stale citation. Run by scripts/test.sh.

    scripts/check_doc_links.py [ROOT]      # ROOT: the repository (default: this script's ..)

Prints each broken link as FILE:LINE: TARGET and exits 1 if there is one."""
import glob
import os
import re
import sys

# [text](target) and [text](target "title"); images too. Reference-style [x]: target lines.
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
FENCE = re.compile(r"^\s*(```|~~~)")
MENTION = re.compile(r"(?<![\w/.-])((?:\.\./)?[\w./-]*\w\.md)\b")


def prose(path):
    """(line number, text) of every line outside fenced and indented code blocks."""
    in_fence = in_indented = False
    prev_blank = True
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            blank = not line.strip()
            in_indented = (in_indented or prev_blank) and (line.startswith("    ") or blank)
            prev_blank = blank
            if FENCE.match(line):
                in_fence = not in_fence
            elif not in_fence and not in_indented:
                yield n, line


def links(path):
    """(line number, target) of every link outside code."""
    for n, line in prose(path):
        text = re.sub(r"`[^`]*`", "", line)
        for m in INLINE.finditer(text):
            yield n, m.group(1)
        m = REFDEF.match(text)
        if m:
            yield n, m.group(1)


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                           os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    files = [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    broken = checked = 0
    for md in files:
        if not os.path.exists(md):
            continue
        for n, target in links(md):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0].split("?", 1)[0]
            base = root if path.startswith("/") else os.path.dirname(md)
            full = os.path.normpath(os.path.join(base, path.lstrip("/")))
            checked += 1
            if not full.startswith(root + os.sep) and full != root or not os.path.exists(full):
                broken += 1
                print("%s:%d: %s" % (os.path.relpath(md, root), n, target))
        for n, line in prose(md):
            for name in MENTION.findall(re.sub(r"\]\([^)]*\)", "]", line)):
                checked += 1
                if not any(os.path.exists(os.path.normpath(os.path.join(b, name)))
                           for b in (os.path.dirname(md), root, os.path.join(root, "docs"))):
                    broken += 1
                    print("%s:%d: %s (named in the text)" % (os.path.relpath(md, root), n, name))
    print("doc links: %d relative links and .md names checked, %d broken" % (checked, broken))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
