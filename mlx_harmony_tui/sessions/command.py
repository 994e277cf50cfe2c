"""``mlx-harmony-tui sessions list|show|export|delete|rename|import|migrate|repair|convert-dialogue``.

list/show/export only read: a damaged file is reported and skipped, never moved. migrate and repair are the
commands that rewrite or move files (sessions/maintenance.py); delete asks first (confirm.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlx_harmony_tui.confirm import confirm
from mlx_harmony_tui.sessions import maintenance
from mlx_harmony_tui.sessions.dialogue import (
    DialogueError,
    dialogue_to_examples,
    dialogue_to_session,
    read_dialogue,
)
from mlx_harmony_tui.sessions.export import to_json, to_markdown
from mlx_harmony_tui.sessions.importers import import_file
from mlx_harmony_tui.sessions.schema import SessionError, new_id
from mlx_harmony_tui.sessions.store import SessionStore


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sessions", help="list, show, export, delete, rename, import and migrate saved chats")
    p.add_argument("--dir", type=Path, default=None, help="sessions folder (default: the app's data dir)")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    # --dir also after the action (`sessions list --dir D`); SUPPRESS keeps one given before it
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help="sessions folder")
    sub = p.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[after], **kw)

    a = action("list", help="list sessions, newest first")
    a.add_argument("query", nargs="*", metavar="WORD",
                   help="only sessions whose title or messages contain all these words")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=cmd_list)

    a = action("show", help="print a session")
    a.add_argument("id", help="session id (a unique prefix is enough)")
    a.set_defaults(func=cmd_show)

    a = action("export", help="export a session as Markdown or OpenAI-style JSON")
    a.add_argument("id")
    a.add_argument("--format", choices=("md", "json"), default="md")
    a.add_argument("-o", "--output", type=Path, default=None, help="file to write (default: stdout)")
    a.set_defaults(func=cmd_export)

    a = action("delete", help="delete sessions (asks first; --yes to skip)")
    a.add_argument("ids", nargs="+", metavar="ID", help="session id (a unique prefix is enough)")
    a.add_argument("--yes", "-y", action="store_true", help="do not ask")
    a.set_defaults(func=cmd_delete)

    a = action("rename", help="give a session a new title")
    a.add_argument("id", help="session id (a unique prefix is enough)")
    a.add_argument("title", nargs="+", help="the new title (the words are joined)")
    a.set_defaults(func=cmd_rename)

    a = action("import", help="import mlx-harmony chat files (or session files)")
    a.add_argument("files", nargs="+", type=Path)
    a.set_defaults(func=cmd_import)

    a = action("migrate", help="rewrite old-schema session files in the current schema "
                                       "(damaged files are moved aside)")
    a.add_argument("--dry-run", action="store_true", help="only say what would change")
    a.set_defaults(func=cmd_migrate)

    a = action("repair", help="move damaged session files aside (<file>.corrupt-<time>)")
    a.add_argument("--dry-run", action="store_true", help="only say what would be moved")
    a.set_defaults(func=cmd_repair)

    a = action("convert-dialogue", help="turn 'user:/assistant:' text into a session or examples")
    a.add_argument("file", type=Path)
    a.add_argument("--examples", action="store_true", help="write example dialogue for the prompt config")
    a.add_argument("--format", choices=("json", "toml"), default="json", help="examples format")
    a.add_argument("-o", "--output", type=Path, default=None, help="examples file (default: stdout)")
    a.add_argument("--title", default="", help="title of the new session")
    a.set_defaults(func=cmd_convert_dialogue)


def _store(args: argparse.Namespace) -> SessionStore:
    return SessionStore(args.dir)


def _report_problems(store: SessionStore) -> None:
    for problem in store.problems:
        print(f"warning: {problem}", file=sys.stderr)


def _write(text: str, output: Path | None) -> None:
    """An export the user asked for at a path they named gets the umask's usual mode (like `cp` or a shell
    redirect): they chose where it goes and may mean to share it. The app's own files are 0600 (store.py)."""
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise SessionError(f"cannot write {output}: {e.strerror}") from None
    print(f"wrote {output}")


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    query = " ".join(args.query) or None
    rows = store.list(query)
    _report_problems(store)
    if args.json:
        print(json.dumps([{"id": s.id, "title": s.title, "created_at": s.created_at, "updated_at": s.updated_at,
                           "model": s.model, "exchanges": s.exchanges, "message_count": s.message_count,
                           "path": str(s.path)}
                          for s in rows], ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no sessions" + (f" matching {query!r}" if query else ""))
        return 0
    width = max(len(s.id) for s in rows)
    print(f"{'ID':<{width}}  {'UPDATED':<16}  {'TURNS':>5}  TITLE")  # turns: a message and its reply
    for s in rows:
        print(f"{s.id:<{width}}  {s.updated_at[:16].replace('T', ' '):<16}  {s.exchanges:>5}  {s.title}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    sys.stdout.write(to_markdown(store.load(store.resolve(args.id))))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = _store(args)
    session = store.load(store.resolve(args.id))
    _write(to_markdown(session) if args.format == "md" else to_json(session), args.output)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    store = _store(args)
    ids = list(dict.fromkeys(store.resolve(i) for i in args.ids))  # every name is checked before anything goes
    titles = {}
    for sid in ids:
        try:
            titles[sid] = store.load(sid).title
        except SessionError:  # a damaged file can be deleted too: it is the user's to remove
            titles[sid] = "(unreadable)"
    what = ", ".join(f"{sid} '{titles[sid]}'" for sid in ids)
    if not args.yes and not confirm(f"delete {what}"):
        print("kept")
        return 1
    for sid in ids:
        store.delete(sid)
        print(f"deleted {sid} '{titles[sid]}'")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    store = _store(args)
    session = store.rename(store.resolve(args.id), " ".join(args.title))
    print(f"renamed {session.id} to '{session.title}'")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    store = _store(args)
    results = [(f, import_file(f)) for f in args.files]  # all files parse before anything is written
    for path, result in results:
        for line in result.report:
            print(f"note: {line}", file=sys.stderr)
        for session in result.sessions:
            if store.path(session.id).exists():
                old = session.id
                session.id = new_id()
                print(f"note: {path.name}: id {old} already exists, imported as {session.id}", file=sys.stderr)
            store.save(session, touch=False)
            print(f"imported {session.id}  {len(session.messages)} messages  {session.title}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    lines, failed = maintenance.migrate_all(_store(args), dry_run=args.dry_run)
    for line in lines:
        print(line)
    if not lines:
        print("all sessions are at the current schema")
    if failed:
        print(f"{failed} file(s) {'would not be' if args.dry_run else 'could not be'} migrated", file=sys.stderr)
    return 1 if failed else 0


def cmd_repair(args: argparse.Namespace) -> int:
    lines, _ = maintenance.migrate_all(_store(args), dry_run=args.dry_run, only=("damaged",))
    for line in lines:
        print(line)
    if not lines:
        print("no damaged session files")
    return 0


def cmd_convert_dialogue(args: argparse.Namespace) -> int:
    text = read_dialogue(args.file)
    if args.examples:
        _write(dialogue_to_examples(text, args.format, str(args.file)), args.output)
        return 0
    if args.output is not None:
        raise DialogueError("-o/--output applies to --examples; a session is saved in the sessions folder")
    store = _store(args)
    session = dialogue_to_session(text, args.title, str(args.file))
    store.save(session)
    print(f"created session {session.id}  {len(session.messages)} messages  {session.title}")
    return 0
