"""The Delta Lake JVM connector jars: where they live, and fetching them from Maven Central.

The `delta-spark` wheel ships only Delta's Python API; the connector itself is two jars
(`io.delta:delta-spark_2.13` and `io.delta:delta-storage`) of the same version. `make
install` (or `python -m spark_scoring.jars`) downloads them once into the environment
(`<sys.prefix>/share/spark-scoring/jars/delta-<version>/`), so they travel with a packed
virtualenv (venv-pack, conda-pack) to cluster nodes, and `session.get_spark` puts them on
the classpath when it starts (or joins) a JVM that lacks them.

Where the jars are looked for, first match wins:
1. `$SPARK_SCORING_DELTA_JARS`: a folder holding both jars (an empty value means "none");
2. `<sys.prefix>/share/spark-scoring/jars/delta-<version>/`.

Example:
    $ python -m spark_scoring.jars            # fetch into the environment, verify SHA-1
    $ python -m spark_scoring.jars --check    # exit 0 when present, 1 when not
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: Maven Central; `$SPARK_SCORING_MAVEN_URL` points at a mirror (Artifactory, Nexus) instead.
MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"
SCALA_BINARY = "2.13"
#: The Delta version whose jars match the installed Python API when it cannot be read.
FALLBACK_DELTA_VERSION = "4.4.0"
#: What a session needs besides the jars (set when the session starts; static confs).
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
#: A class of the connector: when it loads, the connector is on the classpath.
DELTA_CLASS = "io.delta.tables.DeltaTable"
_ARTIFACTS = (f"delta-spark_{SCALA_BINARY}", "delta-storage")

#: What to run to get the jars (quoted in error messages).
FETCH_HINT = (
    "run `make install` (or `python -m spark_scoring.jars`) with access to Maven Central, or "
    "point $SPARK_SCORING_DELTA_JARS at a folder holding delta-spark_2.13-{v}.jar and "
    "delta-storage-{v}.jar, or start Spark with spark.jars.packages=io.delta:delta-spark_2.13:{v}"
)


def delta_version() -> str:
    """The Delta Lake version of the installed `delta-spark` Python API (its jars must match)."""
    try:
        return version("delta-spark")
    except PackageNotFoundError:
        return FALLBACK_DELTA_VERSION


def jar_names(delta: str | None = None) -> list[str]:
    """File names of the connector jars for a Delta version."""
    delta = delta or delta_version()
    return [f"{artifact}-{delta}.jar" for artifact in _ARTIFACTS]


def default_dir(delta: str | None = None) -> Path:
    """Where `fetch` puts the jars by default: inside the running Python environment."""
    return Path(sys.prefix) / "share" / "spark-scoring" / "jars" / f"delta-{delta or delta_version()}"


def find_delta_jars(delta: str | None = None) -> list[Path] | None:
    """The connector jars, or None when they are not installed (see the module docstring)."""
    delta = delta or delta_version()
    env = os.environ.get("SPARK_SCORING_DELTA_JARS")
    if env == "":
        return None
    folder = Path(env).expanduser() if env else default_dir(delta)
    jars = [folder / name for name in jar_names(delta)]
    return jars if all(j.is_file() and j.stat().st_size > 0 for j in jars) else None


def missing_jars_message(delta: str | None = None) -> str:
    """How to get the jars, for error messages."""
    return FETCH_HINT.format(v=delta or delta_version())


def _url(base: str, artifact: str, delta: str, suffix: str = "") -> str:
    return f"{base.rstrip('/')}/io/delta/{artifact}/{delta}/{artifact}-{delta}.jar{suffix}"


def _download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - Maven URL
        return response.read()


def _intact(jar: Path, recorded: Path) -> bool:
    """True when `jar` exists and matches the checksum recorded when it was fetched."""
    if not (jar.is_file() and recorded.is_file()):
        return False
    return hashlib.sha1(jar.read_bytes()).hexdigest() == recorded.read_text().strip()  # noqa: S324


def fetch_delta_jars(
    dest: str | os.PathLike[str] | None = None,
    *,
    delta: str | None = None,
    maven_url: str | None = None,
    timeout: float = 60.0,
) -> list[Path]:
    """Download the connector jars (SHA-1 checked against Maven's `.sha1` files) into `dest`.

    Idempotent: jars already there with a matching recorded checksum are kept. Each jar is
    written to a temporary file and renamed into place, so a killed download never leaves a
    truncated jar that `find_delta_jars` would accept.

    Raises:
        OSError: Maven is unreachable, a jar is missing there, or a checksum does not match
            (the message names the URL and says what to do).
    """
    delta = delta or delta_version()
    base = maven_url or os.environ.get("SPARK_SCORING_MAVEN_URL") or MAVEN_CENTRAL
    folder = Path(dest) if dest is not None else default_dir(delta)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for artifact in _ARTIFACTS:
        target = folder / f"{artifact}-{delta}.jar"
        recorded = folder / f"{target.name}.sha1"
        if _intact(target, recorded):
            out.append(target)
            continue
        url = _url(base, artifact, delta)
        try:
            expected = _download(url + ".sha1", timeout).decode().split()[0].strip()
            data = _download(url, timeout)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise OSError(
                f"cannot download {url} ({getattr(exc, 'reason', exc)}); check access to Maven "
                "Central (or set SPARK_SCORING_MAVEN_URL to a mirror), or copy the jar there by hand"
            ) from exc
        actual = hashlib.sha1(data).hexdigest()  # noqa: S324 - Maven publishes SHA-1
        if actual != expected:
            raise OSError(f"{url}: SHA-1 {actual} does not match the published {expected}; retry the download")
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as tmp:
            tmp.write(data)
        os.chmod(tmp.name, 0o644)  # readable by the Spark user on shared nodes
        os.replace(tmp.name, target)
        recorded.write_text(expected + "\n")
        out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m spark_scoring.jars [--dest DIR] [--check]`; exit 0 ok, 1 failed / absent."""
    parser = argparse.ArgumentParser(prog="python -m spark_scoring.jars", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", help=f"folder for the jars (default: {default_dir()})")
    parser.add_argument("--maven-url", help=f"Maven repository (default: $SPARK_SCORING_MAVEN_URL or {MAVEN_CENTRAL})")
    parser.add_argument("--check", action="store_true", help="only say whether the jars are installed")
    args = parser.parse_args(argv)
    if args.check:
        found = find_delta_jars()
        print(" ".join(map(str, found)) if found else f"Delta jars not installed; {missing_jars_message()}")
        return 0 if found else 1
    try:
        jars = fetch_delta_jars(args.dest, maven_url=args.maven_url)
    except OSError as exc:
        print(f"spark-scoring: Delta Lake jars not fetched: {exc}", file=sys.stderr)
        return 1
    print("\n".join(str(j) for j in jars))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
