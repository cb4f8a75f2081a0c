"""``--devices N``: the command line relaunched under torchrun, one process per device.

Imports advisor.core and the terminal (``advisor.cli.render``) only.
"""


from __future__ import annotations

import sys

from advisor.cli.render import err_console
from advisor.core.errors import AdvisorError

ARGV: list[str] = []  # the arguments main() was called with (``--devices`` relaunches them under torchrun)


def argv_value(option: str) -> str | None:
    args = ARGV or sys.argv[1:]
    for i, a in enumerate(args):
        if a == option and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None


def without_devices(args: list[str]) -> list[str]:
    out_args, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--devices":
            skip = True
        elif not a.startswith("--devices="):
            out_args.append(a)
    return out_args


def relaunch(devices: int | None, device: str) -> None:
    """``--devices N`` (N > 1) outside torchrun: run this same command under torchrun on N processes."""
    from advisor.core import distributed

    if devices is None or devices <= 1 or distributed.from_env().world > 1:
        return
    import torch

    wanted = distributed.requested_device(device)
    if torch.cuda.is_available() and (wanted in (None, "auto") or str(wanted).startswith("cuda")):
        gpus = torch.cuda.device_count()
        if devices > gpus:  # NCCL refuses two ranks on one GPU; say so before starting any
            raise AdvisorError(f"--devices {devices} runs one process per GPU, but this machine has {gpus}",
                               hint=f"use --devices {gpus}, or --device cpu for {devices} CPU processes")
    rc, failure = distributed.launch(without_devices(ARGV or sys.argv[1:]), nproc=devices)
    if failure:
        err_console.print(f"[bold red]error:[/bold red] the distributed run stopped: {failure}; the other ranks were "
                          f"stopped too. Fine-tunes resume from their last checkpoint: advisor run --resume RUN_DIR "
                          f"--devices {devices}", soft_wrap=True)
    sys.exit(rc)
