"""Task mixtures: named mixtures, mixing rates as in the T5 paper, and the seeded training stream.

Rates (Raffel et al. 2020, section 3.5.2), from each task's train size n_t:
  proportional  rate_t ~ min(n_t, cap)                  (examples-proportional, cap = T5's K)
  temperature   rate_t ~ min(n_t, cap) ** (1 / T)       (T = 1 is proportional; large T tends to equal)
  equal         rate_t ~ 1
  weights       rate_t ~ w_t                            (explicit, per task)

An epoch draws sum_t min(n_t, cap) examples (all examples when cap is unset): each task gets its
rate's share, rounded by largest remainder, read from an endless seeded stream of permutations of
that task's rows (so a down-weighted task shows new rows every epoch and an up-weighted one repeats
its rows as rarely as possible). The epoch is shuffled, then grouped by length. Nothing is copied:
the tasks' tokenised sets are concatenated as memory-mapped Arrow tables and the stream holds indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flantune.config_files import MIXTURES_DIR, configs_root, group_options, read_yaml
from flantune.errors import FlantuneError, did_you_mean

SCHEMES = ("proportional", "temperature", "equal", "weights")
MIXTURE_KEYS = ("description", "tasks", "include", "mixing")
MIXING_KEYS = ("scheme", "cap", "temperature", "weights")


# ---- named mixtures (configs/mixture/*.yaml) ------------------------------------------------------------


def _mixture_file(name: str) -> Path:
    """A built-in mixture by name (configs/mixture/NAME.yaml), or a mixture file by path."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise FlantuneError(f"Mixture file '{name}' does not exist.")
        return path.resolve()
    options = group_options(MIXTURES_DIR)
    if name not in options:
        raise FlantuneError(
            f"Unknown mixture '{name}'.{did_you_mean(name, options)} Mixtures: {', '.join(options) or 'none'} "
            "(configs/mixture/), or a path to your own mixture file. For an ad-hoc mixture use task=[a,b,c]."
        )
    return configs_root() / MIXTURES_DIR / f"{name}.yaml"


def _read_mixture(name: str) -> dict:
    path = _mixture_file(name)
    data = read_yaml(path, "Mixture file")
    if not isinstance(data.get("tasks", []), (list, dict)):
        raise FlantuneError(f"Mixture file {path}: 'tasks' must be a list of task names or a mapping task -> weight.")
    if isinstance(data.get("include"), str):  # one mixture, written without brackets
        data["include"] = [data["include"]]
    if not isinstance(data.get("include") or [], list):
        raise FlantuneError(f"Mixture file {path}: 'include' must be a list of mixture names or files, e.g. "
                            f"include: [classify3], got {data['include']!r}.")
    if not isinstance(data.get("mixing") or {}, dict):
        raise FlantuneError(f"Mixture file {path}: 'mixing' must be a mapping of settings, e.g. mixing: {{scheme: "
                            f"equal}}, got {data['mixing']!r}.")
    for key in data:
        if key not in MIXTURE_KEYS:
            raise FlantuneError(
                f"Mixture file {path}: unknown key '{key}'.{did_you_mean(key, MIXTURE_KEYS)} "
                f"A mixture file has: {', '.join(MIXTURE_KEYS)}."
            )
    for key in data.get("mixing") or {}:
        if key not in MIXING_KEYS:
            raise FlantuneError(
                f"Mixture file {path}: unknown key 'mixing.{key}'.{did_you_mean(key, MIXING_KEYS)} "
                f"mixing has: {', '.join(MIXING_KEYS)}."
            )
    return data


def expand_mixture(name: str, chain: tuple[str, ...] = ()) -> tuple[list[str], dict[str, float]]:
    """The tasks of a mixture, included mixtures flattened in order, and any per-task weights.

    Only the outermost mixture's `mixing` settings apply; an included mixture gives its tasks (and
    its weights, where it lists tasks with weights)."""
    tasks, weights, _ = _expand(name, chain)
    return tasks, weights


def _expand(name: str, chain: tuple[str, ...]) -> tuple[list[str], dict[str, float], dict]:
    """expand_mixture, plus the mixture file's own settings."""
    key = str(_mixture_file(name))
    if key in chain:
        names = [Path(c).stem for c in (*chain, key)]
        raise FlantuneError(
            f"Mixture '{Path(key).stem}' includes itself: {' -> '.join(names)}. Remove the cycle from the include lists."
        )
    data = _read_mixture(name)
    tasks: list[str] = []
    weights: dict[str, float] = {}
    for included in data.get("include") or []:
        more, w = expand_mixture(_included(str(included), key), (*chain, key))
        tasks.extend(more)
        weights.update(w)
    raw = data.get("tasks") or []
    if isinstance(raw, dict):
        weights.update({str(k): v for k, v in raw.items()})
        raw = list(raw)
    tasks.extend(str(t) for t in raw)
    if not tasks:
        raise FlantuneError(f"Mixture '{name}' ({key}) names no tasks: give it tasks or include.")
    return list(dict.fromkeys(tasks)), weights, data


def _included(name: str, by: str) -> str:
    """A mixture an include list names: a relative file path is relative to the including file `by`."""
    if name.endswith((".yaml", ".yml")) and not Path(name).is_absolute():
        return str(Path(by).parent / name)
    return name


def mixture_files(name: str, chain: tuple[str, ...] = ()) -> list[str]:
    """The file of mixture `name` and those it includes: inputs of a run, which overwrite=true must not delete."""
    key = str(_mixture_file(name))
    if key in chain:  # a cycle, which expand_mixture reports
        return []
    files = [key]
    for included in _read_mixture(name).get("include") or []:
        files.extend(mixture_files(_included(str(included), key), (*chain, key)))
    return files


def mixture_patch(name: str, where: str) -> dict:
    """The config patch of mixture=NAME: its tasks and its mixing settings."""
    tasks, weights, data = _expand(name, ())
    mixing = dict(data.get("mixing") or {})
    if weights and "weights" not in mixing:
        mixing["weights"] = weights
        mixing.setdefault("scheme", "weights")  # a file that weighs its tasks means those weights
    return {"task": tasks, "mixture": Path(name).stem if name.endswith((".yaml", ".yml")) else name,
            "mixing": mixing}


# ---- rates ----------------------------------------------------------------------------------------------


def check_mixing(tasks: list[str], scheme: str, cap: int | None = None, temperature: float = 1.0,
                 weights: dict[str, float] | None = None) -> None:
    """Mixing settings that can't work, caught before any data is read."""
    if scheme not in SCHEMES:
        raise FlantuneError(f"mixing.scheme is {scheme!r}; choose one of {', '.join(SCHEMES)}.{did_you_mean(scheme, SCHEMES)}")
    if cap is not None and cap < 1:
        raise FlantuneError(f"mixing.cap is {cap}; it must be a positive number of examples (or null for no cap).")
    if scheme == "temperature" and not temperature > 0:
        raise FlantuneError(f"mixing.temperature is {temperature}; it must be > 0 (1 = proportional).")
    weights = dict(weights or {})
    unknown = [t for t in weights if t not in tasks]
    if unknown:
        raise FlantuneError(
            f"mixing.weights names task '{unknown[0]}', which is not in this run ({', '.join(tasks)})."
            f"{did_you_mean(unknown[0], tasks)}"
        )
    if scheme != "weights":
        if weights and len(tasks) > 1:
            raise FlantuneError(
                f"mixing.weights is set, but mixing.scheme={scheme} doesn't read weights. Add mixing.scheme=weights "
                "(with a weight for every task), or leave the weights out."
            )
        return
    missing = [t for t in tasks if t not in weights]
    if missing:
        raise FlantuneError(f"mixing.scheme=weights needs a weight for every task; missing: {', '.join(missing)}.")
    bad = {t: w for t, w in weights.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0}
    if bad:
        raise FlantuneError(f"mixing.weights must be numbers >= 0; got {bad}.")
    if not sum(weights.values()) > 0:
        raise FlantuneError(f"The mixing weights are all zero ({weights}): give at least one task a positive weight.")


def mixing_rates(sizes: dict[str, int], scheme: str, cap: int | None = None, temperature: float = 1.0,
                 weights: dict[str, float] | None = None) -> dict[str, float]:
    """Each task's share of the training stream (summing to 1)."""
    check_mixing(list(sizes), scheme, cap, temperature, weights)
    capped = {t: float(min(n, cap) if cap else n) for t, n in sizes.items()}
    if scheme == "proportional":
        raw = capped
    elif scheme == "temperature":
        raw = {t: n ** (1.0 / temperature) for t, n in capped.items()}
    elif scheme == "equal":
        raw = {t: 1.0 for t in sizes}
    else:
        raw = {t: float(weights[t]) for t in sizes}
    total = sum(raw.values())
    return {t: v / total for t, v in raw.items()}


def epoch_counts(rates: dict[str, float], total: int) -> dict[str, int]:
    """Examples per task in an epoch of `total`: the rates, rounded by largest remainder."""
    exact = {t: r * total for t, r in rates.items()}
    counts = {t: int(np.floor(v)) for t, v in exact.items()}
    short = total - sum(counts.values())
    for t in sorted(exact, key=lambda t: (counts[t] - exact[t], t))[:short]:
        counts[t] += 1
    return counts


# ---- the training stream --------------------------------------------------------------------------------


@dataclass
class TrainSet:
    dataset: Any  # concatenated tokenised train sets
    offsets: dict[str, int]  # task -> first row in `dataset`
    sizes: dict[str, int]
    rates: dict[str, float]
    counts: dict[str, int]  # examples per epoch per task
    seed: int
    sampling: str
    lengths: np.ndarray  # (rows, 2): input and label length
    mixing: dict[str, Any] = field(default_factory=dict)
    row_shapes: Any = None  # sampling=packed: the rows each example packs into (flantune.packing.RowShapes)
    _plans: dict = field(default_factory=dict, init=False, repr=False)  # batch rows -> PackedPlan, made on first use

    @property
    def epoch_size(self) -> int:
        return sum(self.counts.values())

    def _task_rows(self, task: str, start: int, count: int) -> np.ndarray:
        """Rows start..start+count of the task's endless stream of seeded permutations."""
        n = self.sizes[task]
        out = []
        pos = start
        while len(out) < count:
            k, off = divmod(pos, n)
            perm = np.random.default_rng([self.seed, k, *map(ord, task)]).permutation(n)
            take = min(n - off, count - len(out))
            out.extend(perm[off:off + take])
            pos += take
        return np.asarray(out, dtype=np.int64) + self.offsets[task]

    def epoch_stream(self, epoch: int) -> np.ndarray:
        parts = [self._task_rows(t, epoch * c, c) for t, c in self.counts.items() if c]
        stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return stream[np.random.default_rng([self.seed, 7919, epoch]).permutation(len(stream))]

    def plan(self, batch_rows: int):
        """sampling=packed: the rows of every epoch in batches of `batch_rows` rows (flantune.packing.PackedPlan),
        made once."""
        from flantune.packing import PackedPlan

        if batch_rows not in self._plans:
            self._plans[batch_rows] = PackedPlan(self.epoch_stream, self.lengths, self.row_shapes,
                                                 batch_rows=batch_rows, seed=self.seed)
        return self._plans[batch_rows]

    def examples_per_row(self) -> float:
        """sampling=packed: examples a row holds on average, from how many rows the first epoch's examples
        pack into (every example of an epoch lands in one row)."""
        return self.epoch_size / max(self.plan(1).rows_per_epoch, 1)

    def packed_rows_per_batch(self, batch_size: int) -> int:
        """sampling=packed: how many whole rows a batch takes to hold `batch_size` examples on average."""
        from flantune.packing import rows_per_batch

        return rows_per_batch(batch_size, self.examples_per_row())

    def label_tokens_per_batch(self, batch_size: int, processes: int = 1) -> float:
        """The label tokens one process's batch of `batch_size` (examples, or rows when packed) holds on average
        over the first epoch: what a step's normaliser under train.loss_normalization=tokens is made of
        (flantune.step.decide), so an epoch's steps add up to its token mean however its examples are batched."""
        global_batch = batch_size * processes
        if self.sampling == "packed":
            plan = self.plan(global_batch)
            examples = plan.examples(range(plan.rows_per_epoch))
            batches = plan.rows_per_epoch // global_batch  # whole batches of rows by construction
        else:
            examples = self.epoch_stream(0)
            batches = -(-len(examples) // global_batch)
        return float(self.lengths[examples, 1].sum()) / max(batches * processes, 1)

    def sampler(self, batch_size: int):
        from flantune.batching import LengthGroupedSampler, StreamSampler, grouping_keys

        if self.sampling == "packed":
            return StreamSampler(self.plan(batch_size).row_indices)
        if self.sampling == "random":
            return StreamSampler(self.epoch_stream)
        return LengthGroupedSampler(grouping_keys(self.lengths, self.sampling), batch_size, self.seed,
                                    stream=self.epoch_stream)

    def task_of(self, rows: np.ndarray) -> np.ndarray:
        starts = np.array([self.offsets[t] for t in self.sizes])
        return np.searchsorted(starts, rows, side="right") - 1

    def drawn(self, drawn: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The examples of the first `drawn` items (examples; packed: rows) the trainer drew, in order, and where
        each item's examples start among them."""
        if self.sampling == "packed":
            plan = self.plan(batch_size)
            items = [plan.row(i) for i in range(drawn)]
            starts = np.cumsum([0] + [len(x) for x in items])[:-1]
            return (np.concatenate(items) if items else np.zeros(0, dtype=np.int64)), starts
        sampler = self.sampler(batch_size)
        parts, epoch, left = [], 0, drawn
        while left > 0 and self.epoch_size:
            sampler.set_epoch(epoch)
            rows = np.fromiter(iter(sampler), dtype=np.int64)[:left]
            parts.append(rows)
            left -= len(rows)
            epoch += 1
        rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return rows, np.arange(len(rows))

    def random_pad_fraction(self, batch_size: int) -> float:
        """Pad fraction of the first epoch's examples under plain random batching, for comparison."""
        from flantune.batching import pad_fraction

        return pad_fraction(self.lengths, self.epoch_stream(0), batch_size)

    def report(self, drawn: int, batch_size: int, step_items: int) -> dict[str, Any]:
        """The mixture's settings and rates, what the trainer's first `drawn` items (examples, or rows) held per
        task, and how many tasks a step of `step_items` items (its micro-batches on every process) held on average."""
        rows, starts = self.drawn(drawn, batch_size)
        tasks = self.task_of(rows)
        names = list(self.sizes)
        seen = dict(zip(names, np.bincount(tasks, minlength=len(names)).tolist()))
        total = sum(seen.values())
        in_step = np.zeros((len(starts[::step_items]), len(names)), dtype=np.int64)
        if len(rows):
            in_step = np.add.reduceat(np.eye(len(names), dtype=np.int64)[tasks], starts[::step_items], axis=0)
        return {"mixing": self.mixing, "train_sizes": self.sizes, "requested_rates": self.rates,
                "examples_per_epoch": self.counts, "examples_seen": seen,
                "realised_rates": {t: (v / total if total else 0.0) for t, v in seen.items()},
                "tasks_per_step": float((in_step > 0).sum(axis=1).mean()) if len(in_step) else 0.0}


def build_train_set(p, tokenizer) -> TrainSet:
    import datasets

    from flantune.features import tokenize

    cfg = p.cfg
    parts, offsets, sizes = [], {}, {}
    for task in p.tasks:
        ds = tokenize(task, p.rows[(task.name, "train")], tokenizer, role="train",
                      template_seed=cfg.data.template_seed)
        offsets[task.name] = sum(sizes.values())
        sizes[task.name] = len(ds)
        parts.append(ds)
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    mixing = mixing_settings(cfg)
    rates = mixing_rates(sizes, **mixing) if len(sizes) > 1 else {p.tasks[0].name: 1.0}
    cap = mixing.get("cap")
    total = sum(min(n, cap) if cap else n for n in sizes.values())
    lengths = np.stack([_column(dataset, "input_length"), _column(dataset, "label_length")], axis=1)
    row_shapes = None
    if cfg.train.sampling == "packed":
        from flantune.packing import row_shapes as packed_row_shapes

        tasks = np.repeat(np.arange(len(sizes)), list(sizes.values()))
        row_shapes = packed_row_shapes(lengths, tasks, cfg.train.packed_input_length, cfg.train.packed_label_length,
                                       seed=cfg.seed)
    return TrainSet(dataset=dataset, offsets=offsets, sizes=sizes, rates=rates, counts=epoch_counts(rates, total),
                    seed=cfg.seed, sampling=cfg.train.sampling, lengths=lengths,
                    mixing=mixing if len(sizes) > 1 else {}, row_shapes=row_shapes)


def mixing_settings(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    m = OmegaConf.to_container(cfg.mixing, resolve=True)
    return {"scheme": m["scheme"], "cap": m["cap"], "temperature": m["temperature"], "weights": m["weights"] or {}}


def _column(dataset, name: str) -> np.ndarray:
    from flantune.data import column

    return column(dataset, name).astype(np.int64)
