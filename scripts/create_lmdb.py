#!/usr/bin/env python
"""Pack hazy/clear image folders into BasicSR-format LMDB (data.mdb + meta_info.txt ``key (h,w,c) level``).

Dataset mode (the project layout)::

    python scripts/create_lmdb.py --root datasets/RESIDE-6K
        reads  ROOT/{train,test}/{hazy,GT}/
        writes ROOT/{train,test}/{hazy,GT}.lmdb   (or under --out OUT/{train,test}/)
        copies ROOT/{split}/meta.csv and, with --feature-store NAME, ROOT/{split}/NAME beside the databases

Single-folder mode::

    python scripts/create_lmdb.py --folder path/to/images --lmdb path/to/images.lmdb

Keys are relative paths without extension (``sub/0001_0.8_0.2``); the map size is computed from the data; every
value is read back and compared to its source (disable with --no-verify). Prints a JSON summary.

Safety: no database may equal, contain or sit inside an image folder or copied file, and ``--overwrite`` replaces
only folders that hold nothing but an LMDB (data.mdb, lock.mdb, meta_info.txt). Both are checked before anything is
written.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument('--root', help='dataset root with {train,test}/{hazy,GT}/')
    mode.add_argument('--folder', help='single image folder to pack (needs --lmdb)')
    p.add_argument('--lmdb', help='output .lmdb folder for --folder')
    p.add_argument('--out', default=None, help='output root for --root (default: the root itself)')
    p.add_argument('--splits', nargs='+', default=['train', 'test'], help='splits to pack (missing ones skipped)')
    p.add_argument('--subfolders', nargs='+', default=['hazy', 'GT'], help='image subfolders per split')
    p.add_argument('--feature-store', nargs='*', default=[],
                   help='file name(s) in ROOT/{split}/ (e.g. a CLIP feature store) copied beside the databases')
    p.add_argument('--compress-level', type=int, default=1, help='PNG compression 0-9 of stored images')
    p.add_argument('--non-ascii', choices=('error', 'quote'), default='error',
                   help="non-ASCII file names: 'error' (default) or percent-encode the key ('quote')")
    p.add_argument('--batch', type=int, default=500, help='images per LMDB transaction')
    p.add_argument('--no-verify', action='store_true', help='skip reading everything back')
    p.add_argument('--overwrite', action='store_true', help='replace existing .lmdb folders')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    args = p.parse_args(argv)
    if args.folder and not args.lmdb:
        p.error('--folder needs --lmdb')
    return args


if __name__ == '__main__':
    parse_args()  # --help and usage errors answer here, before the imports below (torch and basicsr take seconds)

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from mixcl_arch.utils.file_io import atomic_write_bytes  # noqa: E402
from mixcl_arch.data.lmdb_tools import make_lmdb_from_folder  # noqa: E402
from mixcl_arch.utils.output_guard import check_outputs_apart  # noqa: E402

LMDB_FILES = {'data.mdb', 'lock.mdb', 'meta_info.txt'}


def copy_atomic(src, dst):
    if osp.abspath(src) == osp.abspath(dst):
        return
    with open(src, 'rb') as f:
        atomic_write_bytes(f.read(), dst)
    shutil.copystat(src, dst)


def check_targets(databases, copies, inputs):
    """Refuse, before anything is written, databases that overlap an input or would replace something else.

    Args:
        databases (list[str]): .lmdb folders to write.
        copies (list[tuple[str, str]]): (source, destination) files to copy; a copy onto its own source is a no-op.
        inputs (list[str]): Image folders read.

    Raises:
        ValueError: An output equals, contains or sits inside an input.
        FileExistsError: An existing output folder holds more than an LMDB.
    """
    check_outputs_apart(databases, inputs + [src for src, _ in copies], 'database')
    check_outputs_apart([dst for _, dst in copies], inputs, 'copy')
    for path in databases:
        extra = sorted(set(os.listdir(path)) - LMDB_FILES) if osp.isdir(path) else []
        if extra or (osp.exists(path) and not osp.isdir(path)):
            raise FileExistsError(f'{path} exists and is not an LMDB folder (holds {extra[:5] or "a file"}); '
                                  'it is never replaced, not even with --overwrite: choose another output.')


def main(argv=None):
    """Run the CLI; returns the JSON-able summary dict."""
    args = parse_args(argv)
    t0 = time.time()
    kw = dict(compress_level=args.compress_level, non_ascii=args.non_ascii, batch=args.batch,
              verify=not args.no_verify, overwrite=args.overwrite, progress=not args.quiet)
    results = []
    if args.folder:
        check_targets([args.lmdb], [], [args.folder])
        results.append(make_lmdb_from_folder(args.folder, args.lmdb, **kw))
    else:
        if not osp.isdir(args.root):
            raise FileNotFoundError(f'Dataset root not found: {args.root}')
        out_root = args.out or args.root
        found = [s for s in args.splits if osp.isdir(osp.join(args.root, s))]
        if not found:
            raise FileNotFoundError(f'None of the splits {args.splits} exists under {args.root}')
        # check everything before writing anything
        for split in found:
            for sub in args.subfolders:
                if not osp.isdir(osp.join(args.root, split, sub)):
                    raise FileNotFoundError(f'Missing image folder {osp.join(args.root, split, sub)}')
            for name in args.feature_store:
                if not osp.isfile(osp.join(args.root, split, name)):
                    raise FileNotFoundError(f'Feature store {osp.join(args.root, split, name)} not found '
                                            '(extract it first with scripts/extract_clip_features.py)')
        check_targets([osp.join(out_root, split, sub + '.lmdb') for split in found for sub in args.subfolders],
                      [(osp.join(args.root, split, name), osp.join(out_root, split, name)) for split in found
                       for name in ['meta.csv'] + list(args.feature_store)
                       if osp.isfile(osp.join(args.root, split, name))],
                      [osp.join(args.root, split, sub) for split in found for sub in args.subfolders])
        for split in found:
            for sub in args.subfolders:
                results.append(
                    make_lmdb_from_folder(osp.join(args.root, split, sub), osp.join(out_root, split, sub + '.lmdb'),
                                          **kw))
            extra = ['meta.csv'] if osp.isfile(osp.join(args.root, split, 'meta.csv')) else []
            for name in extra + list(args.feature_store):
                copy_atomic(osp.join(args.root, split, name), osp.join(out_root, split, name))
    summary = {'databases': results, 'seconds': round(time.time() - t0, 2)}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == '__main__':
    main()
