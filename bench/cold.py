"""`python -m bench.cold`: what a cron job pays, measured from outside, as a user runs it.

Every figure here is the wall time of a FRESH PROCESS (`time.monotonic()` around
`subprocess.run`): interpreter start, imports, Spark session, planning, model resolve and
load, scoring, the write and commit, MLflow, all in it. On the same deterministic review
texts (5-60 words) at two sizes (default 2,000 and 8,000):

  spark-scoring      `spark-scoring run CONFIG --json` (the README config: MiniLM registered
                     in a fresh sqlite MLflow store and resolved through the alias
                     `models:/minilm@champion`, engine `auto`), one fresh output per size;
                     then, on the larger table, a no-op rerun and a night with ONE new row
  plain script       `python -m bench.cold_peers plain`: deltalake read, `encode`, deltalake write
  predict_batch_udf  `python -m bench.cold_peers predict_batch_udf` (Delta via the JVM connector)
  spark_udf          `python -m bench.cold_peers spark_udf` (the registered model, through the alias)

Slope (marginal rows/s) = (n2 - n1) / (t2 - t1) between the two sizes; intercept (fixed
seconds) = t1 - n1 / slope. Sizes run interleaved (size 1 for every peer, then size 2), so
drift on a shared machine hits every peer alike. Before the timed runs one untimed-for-the-
slope run of ours on a tiny table fills what a nightly job finds on disk from the night
before (the registry download cache, the OS page cache); its time is reported as "first run".

Targets (issue 16): cold no-op <= 10 s; one-row night <= no-op + 5 s; our slope >= 1.0x the
plain script's slope.

Example:
    python -m bench.cold --sizes 2000 8000 --cores 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SIZES = (2000, 8000)
QUICK_SIZES = (100, 400)
OURS = "spark-scoring"
PEER_NAMES = {"plain": "plain script", "predict_batch_udf": "Spark predict_batch_udf", "spark_udf": "MLflow spark_udf"}
MODEL_NAME, ALIAS = "minilm", "champion"
#: Issue 16's targets.
MAX_NOOP_S = 10.0
MAX_ONE_ROW_OVER_NOOP_S = 5.0
MIN_SLOPE_VS_PLAIN = 1.0
#: One cold process may take at most this long (a hung run fails the part, not the bench).
PROCESS_TIMEOUT_S = 1200


def _log(msg: str) -> None:
    print(f"[bench.cold {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fit(points: Sequence[tuple[int, float]]) -> dict[str, Any]:
    """Slope (rows/s) and intercept (s) of the line through the first and last (rows, seconds).

    Returns `{"slope_rows_per_s": None, ...}` with a note when the larger size was not slower
    (noise on a loaded machine): no meaningful line then.
    """
    (n1, t1), (n2, t2) = points[0], points[-1]
    if n2 <= n1 or t2 <= t1:
        return {"slope_rows_per_s": None, "intercept_s": None,
                "note": f"no line: {n2:,} rows took {t2:.1f} s, {n1:,} rows {t1:.1f} s"}
    slope = (n2 - n1) / (t2 - t1)
    return {"slope_rows_per_s": round(slope, 2), "intercept_s": round(t1 - n1 / slope, 2)}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_REMOTE"))}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    path = env.get("PYTHONPATH", "")
    if str(REPO) not in path.split(os.pathsep):  # `python -m bench.cold_peers` from any cwd
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), path) if p)
    return env


def timed_process(cmd: Sequence[str], cwd: Path, *, timeout: float = PROCESS_TIMEOUT_S) -> dict[str, Any]:
    """Run `cmd` in a fresh process; wall seconds from outside, and its last stdout line as
    JSON when it is one (our `--json` result, the peers' phases)."""
    from bench.peers import PeakRSS

    start = time.monotonic()
    with PeakRSS(interval_s=0.2) as mem:
        proc = subprocess.run(list(cmd), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
                              check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {proc.stderr[-3000:]}")
    parsed: Any = None
    out = proc.stdout.strip()
    for candidate in (out, out.splitlines()[-1] if out else ""):
        try:
            parsed = json.loads(candidate)
            break
        except ValueError:
            continue
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(mem.peak_mb - mem.baseline_mb, 1), "report": parsed}


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("spark-scoring")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "spark_scoring.cli"]


def our_config(work: Path, name: str, source: Path, cores: int, engine: str) -> Path:
    """The README config for a job on `source`, the model through the registry alias."""
    from bench.common import review_job

    raw = review_job(work, name, source, f"models:/{MODEL_NAME}@{ALIAS}", "bench-cold",
                     spark={"master": f"local[{cores}]"}, lakehouse={"engine": engine})
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _tracking_uri(work: Path) -> str:
    return f"sqlite:///{work / 'mlflow.db'}"


def _ours(work: Path, config: Path) -> dict[str, Any]:
    res = timed_process([*_cli(), "run", str(config), "--json"], work)
    rep = res.pop("report") or {}
    res.update(status=rep.get("status"), rows_scored=rep.get("rows_scored"), mode=rep.get("mode"),
               phases_s=rep.get("seconds", {}))
    return res


def _peer(work: Path, peer: str, source: Path, model_dir: str, cores: int, jars: str, tag: str) -> dict[str, Any]:
    out = work / f"peer_{peer}_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "bench.cold_peers", peer, "--source", str(source), "--output", str(out),
           "--model", model_dir, "--cores", str(cores), "--jars", jars,
           "--model-uri", f"models:/{MODEL_NAME}@{ALIAS}", "--tracking-uri", _tracking_uri(work)]
    res = timed_process(cmd, work)
    rep = res.pop("report") or {}
    res.update(rows=rep.get("rows"), phases_s=rep.get("phases_s", {}), inside_s=rep.get("inside_s"))
    return res


def run(work: Path, model_dir: str, *, sizes: Sequence[int] = SIZES, cores: int = 2, engine: str = "auto",
        repeats: int = 1, peers: Sequence[str] = tuple(PEER_NAMES), save: Callable[[], None] = lambda: None,
        section: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure ours and the peers cold at `sizes`; fills and returns `section`."""
    from bench import data
    from spark_scoring.jars import find_delta_jars
    from spark_scoring.models.register import register_model

    section = {} if section is None else section
    work.mkdir(parents=True, exist_ok=True)
    found = find_delta_jars()
    jars = ",".join(str(j) for j in found) if found else ""
    spark_peers = [p for p in peers if p == "plain" or jars]
    skipped = {PEER_NAMES[p]: "not run: no Delta jars (run `make install`)" for p in peers if p not in spark_peers}
    sizes = sorted(sizes)
    texts = data.review_texts(sizes[-1] + 1, seed=16)
    sources = {}
    for n in sizes:
        sources[n] = work / f"cold_src_{n}"
        data.build_source(sources[n], texts[:n], days=max(2, min(8, n // 250)))
    prime_src = work / "cold_src_prime"
    data.build_source(prime_src, data.review_texts(32, seed=17), days=2)
    _log(f"registering {model_dir} as models:/{MODEL_NAME}@{ALIAS} in a fresh store")
    t = time.monotonic()
    registered = register_model(model_dir, MODEL_NAME, "embedding", alias=ALIAS, tracking_uri=_tracking_uri(work))
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {OURS: {}, **{PEER_NAMES[p]: {} for p in spark_peers}}
    section.update({
        "sizes": sizes, "cores": cores, "engine": engine, "repeats": repeats, "registered": registered,
        "register_s": round(time.monotonic() - t, 2), "runs": runs, "skipped": skipped,
        "configs": {OURS: f"{' '.join(_cli()[-1:])} run CONFIG --json; model.uri models:/{MODEL_NAME}@{ALIAS} "
                          f"(sqlite store, registered by spark-scoring register-model); spark.master "
                          f"local[{cores}]; lakehouse.engine {engine}; source partitioned by day",
                    **{PEER_NAMES[p]: _peer_config(p, cores) for p in spark_peers}},
    })
    _log("first run of ours (tiny table): fills the caches a nightly job finds from the night before")
    section["first_run"] = _ours(work, our_config(work, "cold_prime", prime_src, cores, engine))
    save()
    for n in sizes:
        for rep in range(repeats):
            tag = f"{n}_{rep}"
            config = our_config(work, f"cold_{n}", sources[n], cores, engine)
            shutil.rmtree(work / f"cold_{n}_out", ignore_errors=True)
            runs[OURS].setdefault(str(n), []).append(_ours(work, config))
            _log(f"{OURS} {n:,} rows: {runs[OURS][str(n)][-1]['wall_s']:.1f} s")
            save()
            for p in [p for p in spark_peers if PEER_NAMES[p] not in skipped]:
                try:
                    got = _peer(work, p, sources[n], model_dir, cores, jars, tag)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:  # a broken peer is a finding
                    skipped[PEER_NAMES[p]] = f"failed: {str(exc)[-1500:]}"
                    _log(f"{PEER_NAMES[p]} {n:,} rows FAILED: {str(exc)[-300:]}")
                else:
                    runs[PEER_NAMES[p]].setdefault(str(n), []).append(got)
                    _log(f"{PEER_NAMES[p]} {n:,} rows: {got['wall_s']:.1f} s")
                save()
    largest = our_config(work, f"cold_{sizes[-1]}", sources[sizes[-1]], cores, engine)
    section["noop"] = _ours(work, largest)
    _log(f"{OURS} no-op rerun: {section['noop']['wall_s']:.1f} s ({section['noop']['status']})")
    save()
    new = data.source_frame(texts[sizes[-1]:], data.day_names(1, data.FIRST_DAY), first_id=sizes[-1] + 1)
    data.write_source(sources[sizes[-1]], new)
    section["one_row_night"] = _ours(work, largest)
    _log(f"{OURS} one-row night: {section['one_row_night']['wall_s']:.1f} s")
    section["fits"] = fits(section)
    save()
    return section


def _peer_config(peer: str, cores: int) -> str:
    from bench.cold_peers import config_text

    return f"python -m bench.cold_peers {peer} (own process): " + config_text(peer, cores)


def fits(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per peer: the median wall seconds at each size, slope and intercept."""
    out = {}
    for name, by_size in section["runs"].items():
        points = [(int(n), statistics.median(r["wall_s"] for r in rs)) for n, rs in sorted(
            by_size.items(), key=lambda kv: int(kv[0])) if rs]
        if len(points) >= 2:
            out[name] = {"wall_s": {str(n): round(t, 2) for n, t in points}, **fit(points)}
    return out


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 16's cold targets with PASS/MISS and margins."""
    found: list[dict[str, Any]] = []
    noop, night = section.get("noop"), section.get("one_row_night")
    if noop:
        found.append({"target": f"cold no-op run <= {MAX_NOOP_S:.0f} s", "value": f"{noop['wall_s']:.1f} s",
                      "ok": noop["wall_s"] <= MAX_NOOP_S, "margin": f"{MAX_NOOP_S - noop['wall_s']:+.1f} s"})
    if noop and night:
        limit = noop["wall_s"] + MAX_ONE_ROW_OVER_NOOP_S
        found.append({"target": f"cold one-row night <= no-op + {MAX_ONE_ROW_OVER_NOOP_S:.0f} s",
                      "value": f"{night['wall_s']:.1f} s vs limit {limit:.1f} s",
                      "ok": night["wall_s"] <= limit, "margin": f"{limit - night['wall_s']:+.1f} s"})
    fitted = section.get("fits") or {}
    ours, plain = fitted.get(OURS, {}), fitted.get(PEER_NAMES["plain"], {})
    if ours and plain:
        a, b = ours.get("slope_rows_per_s"), plain.get("slope_rows_per_s")
        ratio = a / b if a and b else None
        found.append({"target": f"cold slope >= {MIN_SLOPE_VS_PLAIN:g}x the plain script's slope",
                      "value": f"{_num(a)} vs {_num(b)} rows/s",
                      "ok": ratio is not None and ratio >= MIN_SLOPE_VS_PLAIN,
                      "margin": f"{ratio:.2f}x (need {MIN_SLOPE_VS_PLAIN:g}x)" if ratio else "no line (noise)"})
    return found


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def markdown(section: dict[str, Any], warm_rows_per_s: dict[str, float] | None = None) -> list[str]:
    """The cold section of the report; `warm_rows_per_s` = the throughput part's marginal
    figures by peer name (shown next to the cold slopes)."""
    sizes = section["sizes"]
    fitted = section.get("fits") or {}
    plain = (fitted.get(PEER_NAMES["plain"]) or {}).get("slope_rows_per_s")
    warm = warm_rows_per_s or {}
    warm_of = {OURS: warm.get("spark-scoring nightly run"), PEER_NAMES["plain"]: warm.get("plain process"),
               PEER_NAMES["predict_batch_udf"]: warm.get("Spark predict_batch_udf"),
               PEER_NAMES["spark_udf"]: warm.get("MLflow spark_udf")}
    lines = [
        f"## Cold end-to-end runs: fresh processes, {' and '.join(f'{n:,}' for n in sizes)} review texts",
        "",
        "Wall seconds of a fresh process each (median of "
        f"{section['repeats']}), measured from outside; slope = marginal rows/s between the sizes, "
        "intercept = fixed seconds; warm = the throughput part's in-process marginal rows/s.",
        "",
        f"| who | {' | '.join(f'{n:,} rows s' for n in sizes)} | x plain s ({sizes[-1]:,}) | slope rows/s | "
        "x plain slope | intercept s | warm rows/s | peak RSS MiB | set-up |",
        f"| --- | {' | '.join('---:' for _ in sizes)} | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    medians = {name: {n: statistics.median(r["wall_s"] for r in by_size[str(n)]) if by_size.get(str(n)) else None
                      for n in sizes} for name, by_size in section["runs"].items()}
    plain_big = (medians.get(PEER_NAMES["plain"]) or {}).get(sizes[-1])
    for name, by_size in section["runs"].items():
        f = fitted.get(name, {})
        walls = [medians[name][n] for n in sizes]
        slope = f.get("slope_rows_per_s")
        ratio = f"{slope / plain:.2f}" if slope and plain else "-"
        wall_ratio = f"{walls[-1] / plain_big:.2f}" if walls[-1] and plain_big else "-"
        rss = max((r["peak_rss_mb"] for rs in by_size.values() for r in rs), default=None)
        lines.append(f"| {name} | {' | '.join(_num(w) for w in walls)} | {wall_ratio} | {_num(slope)} | {ratio} | "
                     f"{_num(f.get('intercept_s'))} | {_num(warm_of.get(name))} | {_num(rss)} | "
                     f"{section['configs'].get(name, '')} |")
    for name, why in section.get("skipped", {}).items():
        lines.append(f"| {name} | {' | '.join('-' for _ in sizes)} | - | - | - | - | - | - | {why} |")
    lines.append("")
    for label, key in (("first run (tiny table, fresh store)", "first_run"), ("no-op rerun", "noop"),
                       ("one-row night", "one_row_night")):
        r = section.get(key)
        if r:
            phases = ", ".join(f"{k} {v:.2f}" for k, v in (r.get("phases_s") or {}).items())
            lines.append(f"- ours, {label}: {r['wall_s']:.1f} s ({r.get('status')}; run phases s: {phases or '-'})")
    big = section["runs"].get(OURS, {}).get(str(sizes[-1]))
    if big:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in (big[-1].get("phases_s") or {}).items())
        lines.append(f"- ours, {sizes[-1]:,} rows: run phases s: {phases}; the rest of the wall time is "
                     "interpreter start, imports and the JVM")
    for name, by_size in section["runs"].items():
        if name != OURS and by_size.get(str(sizes[-1])):
            phases = ", ".join(f"{k} {v:.2f}" for k, v in by_size[str(sizes[-1])][-1]["phases_s"].items())
            lines.append(f"- {name}, {sizes[-1]:,} rows: its own phases s: {phases}")
    lines.append("")
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the cold part alone; prints the figures as JSON and returns them."""
    p = argparse.ArgumentParser(prog="python -m bench.cold", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs=2, default=list(SIZES))
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--engine", default="auto", choices=("auto", "delta-rs", "delta-spark"))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--peers", nargs="*", default=list(PEER_NAMES), choices=list(PEER_NAMES),
                   help="the alternatives to run (default all)")
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    from bench import common

    return common.standalone("bench-cold-", lambda work, model_dir: run(
        work, model_dir, sizes=args.sizes, cores=args.cores, engine=args.engine, repeats=args.repeats,
        peers=args.peers),
        targets, keep=args.keep_tmp)


if __name__ == "__main__":
    main()
