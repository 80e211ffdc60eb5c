"""The wheels bench/gpu_device.sh installs on the device machine, into ``.whl/`` (git-ignored).

Usage: python bench/gpu_wheels.py [--dest .whl]

The device machine (an H200 with Python 3.12, torch 2.11 + CUDA 13.0, transformers 5.17, no
network) lacks pydantic and bitsandbytes and has older transformers / peft / accelerate /
huggingface_hub than the project's lock. These wheels bring the locked versions; pip downloads
them for CPython 3.12 manylinux x86_64 whatever this machine runs. Everything carried to the
device must stay under 64 MiB, so bitsandbytes' wheel (43 MB: one library per CUDA/ROCm/XPU
version) is rewritten with only its CPU and CUDA 13.x libraries (~7 MB). ``kernels`` comes too:
transformers 5.25's ``from_pretrained`` refuses to load any model without it (peftlab's import
guard, peftlab.backbones.hub_kernels, keeps bitsandbytes from fetching a kernel from the Hub with it).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ["pydantic==2.14.4", "pydantic_core==2.50.5", "annotated_types==0.8.0", "typing_inspection==0.4.5",
        "typing_extensions==4.16.0", "bitsandbytes==0.50.2", "transformers==5.25.0", "peft==0.21.2",
        "accelerate==1.16.0", "huggingface_hub==2.4.0", "httpx2==2.16.2", "httpcore2==2.16.2", "truststore==0.10.5",
        "kernels==0.19.1", "tomlkit==0.15.3"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any"]
#: bitsandbytes libraries the device needs: torch cu130 loads libbitsandbytes_cuda130
KEEP_LIBS = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")


def keep(name: str) -> bool:
    """Whether a bitsandbytes wheel member stays: everything but the other platforms' libraries."""
    base = name.rsplit("/", 1)[-1]
    return not (base.startswith("libbitsandbytes_") and base not in KEEP_LIBS)


def slim(wheel: Path) -> None:
    """Rewrite ``wheel`` in place without the libraries ``keep`` drops (RECORD updated to match)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        names = [n for n in src.namelist() if keep(n)]
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = []
        for n in names:
            if n == record:
                continue
            data = src.read(n)
            dst.writestr(src.getinfo(n), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{n},sha256={digest},{len(data)}")
        dst.writestr(record, "\n".join([*rows, f"{record},,"]) + "\n")
    tmp.replace(wheel)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dest", type=Path, default=ROOT / ".whl")
    args = ap.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(args.dest), *PINS]
    subprocess.run(cmd, check=True)
    for wheel in args.dest.glob("bitsandbytes-*.whl"):
        slim(wheel)
    total = sum(p.stat().st_size for p in args.dest.glob("*.whl"))
    print(f"{args.dest}: {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
