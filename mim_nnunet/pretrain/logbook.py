"""What a run tells its user (rank 0 only): a tqdm bar, ``log.txt``, ``log.jsonl`` with one record per
step, ``progress.png`` and reconstruction pictures."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Dict, List, Optional

from tqdm import tqdm

from ..common.atomic import atomic_write
from ..common.layout import RECONSTRUCTIONS_DIR
from .plots import save_progress, save_reconstructions

ETA_AFTER_STEPS = 3              # steps timed before an ETA is shown (the first ones include start-up)
LOG_TEXT, LOG_JSONL, PROGRESS = "log.txt", "log.jsonl", "progress.png"


def read_records(path: Path, up_to_step: Optional[int] = None) -> List[Dict]:
    """Step records of ``log.jsonl`` (a torn last line from a killed run is skipped), optionally only
    those with ``step <= up_to_step``."""
    records = []
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if up_to_step is None or record.get("step", 0) <= up_to_step:
                records.append(record)
    return records


class Logbook:
    """Rank 0's outputs in ``out_dir``; every other rank gets a silent one."""

    def __init__(self, out_dir: Path, total_steps: int, start_step: int, active: bool, log_every: int,
                 plot_every: int, recon_every: int, norm_pix: bool, grid):
        self.out = Path(out_dir)
        self.active, self.total, self.start = active, total_steps, start_step
        self.log_every, self.plot_every, self.recon_every = log_every, plot_every, recon_every
        self.norm_pix, self.grid = norm_pix, grid
        self.records: List[Dict] = []
        self._plotted = -1                  # len(records) when progress.png was last drawn
        self.bar = None
        self._t0: Optional[float] = None
        if active:
            self.out.mkdir(parents=True, exist_ok=True)
            # a resumed run redoes the steps after its checkpoint: drop their records
            self.records = read_records(self.jsonl, up_to_step=start_step)
            atomic_write(self.jsonl, lambda tmp: tmp.write_text(
                "".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8"))
            self.bar = tqdm(total=total_steps, initial=start_step, desc="pre-training", unit="step",
                            dynamic_ncols=True, file=sys.stdout)

    @property
    def jsonl(self) -> Path:
        return self.out / LOG_JSONL

    def text(self, message: str) -> None:
        """A time-stamped line in ``log.txt`` and on the console."""
        if not self.active:
            return
        line = f"{datetime.now().isoformat(timespec='seconds')} {message}"
        with open(self.out / LOG_TEXT, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        tqdm.write(line, file=sys.stdout)

    def eta(self, step: int) -> Optional[timedelta]:
        """Time left, from the mean step time of this process after its first steps (start-up excluded)."""
        done = step - self.start
        if done == ETA_AFTER_STEPS:
            self._t0 = time.perf_counter()
        if self._t0 is None or done <= ETA_AFTER_STEPS:
            return None
        per_step = (time.perf_counter() - self._t0) / (done - ETA_AFTER_STEPS)
        return timedelta(seconds=round(per_step * (self.total - step)))

    def step(self, record: Dict, levels=None) -> None:
        """Record step ``record['step']`` (1-based count of steps done) and redraw what is due."""
        if not self.active:
            return
        step = record["step"]
        eta = self.eta(step)
        if eta is not None:
            record["eta_s"] = eta.total_seconds()
        self.records.append(record)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", sv_s=f"{record['subvolumes_per_s']:.1f}", refresh=False)
        last = step == self.total
        if step % self.log_every == 0 or last:
            terms = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("rec_", "align_")))
            self.text(f"step {step}/{self.total} loss {record['loss']:.4f} ({terms}) lr {record['lr']:.3g} "
                      f"grad_norm {record['grad_norm']:.3g} {record['subvolumes_per_s']:.1f} sub-volumes/s "
                      f"data wait {100 * record['data_wait_fraction']:.0f}%" + (f" ETA {eta}" if eta else ""))
        if step % self.plot_every == 0 or last:
            self._plot()
        if levels is not None:          # the engine passes levels when a picture is due
            save_reconstructions(levels, self.grid, self.out / RECONSTRUCTIONS_DIR / f"step_{step:07d}.png",
                                 self.norm_pix)

    def validation(self, record: Dict) -> None:
        """A validation record (``step`` and ``val_rec_l*``) into ``log.jsonl``, ``log.txt`` and the plot."""
        if not self.active:
            return
        record = {"kind": "validation", **record}
        self.records.append(record)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        terms = " ".join(f"{k[len('val_'):]} {v:.4f}" for k, v in record.items() if k.startswith("val_"))
        self.text(f"validation after step {record['step']}: {terms} (masked-token reconstruction, {record['crops']} "
                  f"fixed crops; 1.0 = predicting each token's mean)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            if self.records and self._plotted != len(self.records):      # a finished run's is drawn already
                self._plot()

    def _plot(self) -> None:
        save_progress(self.records, self.out / PROGRESS)
        self._plotted = len(self.records)
