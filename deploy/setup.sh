#!/usr/bin/env bash
# `make setup`: install everything the platform needs, idempotently.
#
#   1. Debian packages (java, maven, redis-server, prometheus, kcat, chromium) when missing and we are root;
#   2. .venv with the pinned Python closure (constraints.txt), tfx with --ignore-requires-python;
#   3. JVM jars through Maven (deploy/maven/pom.xml), JDBC drivers and Hadoop into Flink's lib/.
#
# Each step leaves a stamp holding the hash of its inputs; a second run that finds every stamp current
# only checks and returns, in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
VENV="$ROOT/.venv"
JARS="$ROOT/.liveml/jars"
STAMPS="$ROOT/.liveml/setup"
mkdir -p "$STAMPS"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }

# --- 1. system packages ---------------------------------------------------------------------------
missing_pkgs=()
JAVA="${JAVA:-java}"   # overridable so the "Java missing" message can be tested
MVN="${MVN:-mvn}"
command -v "$JAVA" >/dev/null || missing_pkgs+=(openjdk-17-jdk-headless)
command -v "$MVN" >/dev/null || missing_pkgs+=(maven)
command -v redis-server >/dev/null || missing_pkgs+=(redis-server)
[ -x /usr/bin/prometheus ] || command -v prometheus >/dev/null || missing_pkgs+=(prometheus)
# Debian's Alertmanager; its binary is prometheus-alertmanager (promtool comes with the prometheus package)
[ -x /usr/bin/prometheus-alertmanager ] || command -v prometheus-alertmanager >/dev/null || missing_pkgs+=(prometheus-alertmanager)
command -v kcat >/dev/null || missing_pkgs+=(kcat)
command -v chromium >/dev/null || missing_pkgs+=(chromium)  # `liveml report`'s test renders the HTML headless
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing_pkgs+=(postgresql)  # catalog.backend: postgres
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null && [ -z "${LIVEML_NO_APT:-}" ]; then
    say "apt-get install ${missing_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
    # the Debian services start themselves; the stack runs its own copies under .liveml/
    for svc in redis-server prometheus prometheus-alertmanager postgresql; do
      if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true; systemctl disable "$svc" >/dev/null 2>&1 || true
      fi
      pkill -x "$svc" 2>/dev/null || true
    done
  else
    die "missing: ${missing_pkgs[*]}. Install them (Debian: sudo apt-get install ${missing_pkgs[*]}) or run make setup as root."
  fi
fi
command -v "$JAVA" >/dev/null || die "Java 17 is required: apt-get install openjdk-17-jdk-headless"
command -v "$MVN" >/dev/null || die "Maven is required: apt-get install maven"
java_major=$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
[ "${java_major:-0}" -ge 17 ] || die "Java 17 or newer is required (found ${java_major:-none}): apt-get install openjdk-17-jdk-headless"
command -v "$PYTHON" >/dev/null || die "$PYTHON is required (the TFX 1.16 / Flink 2.2 set is checked on 3.11)"

# --- 2. Python ------------------------------------------------------------------------------------
py_hash=$(hash_of requirements.in constraints.txt setup.py)
if [ -x "$VENV/bin/python" ] && stamp_ok python "$py_hash"; then
  say "python: .venv is current"
else
  [ -x "$VENV/bin/python" ] || { say "creating .venv"; "$PYTHON" -m venv "$VENV"; }
  say "pip install (pinned by constraints.txt; a cold install takes about two minutes)"
  "$VENV/bin/pip" install -q --upgrade pip wheel "setuptools<80"
  "$VENV/bin/pip" install -q --ignore-requires-python -c constraints.txt -r requirements.in
  "$VENV/bin/pip" install -q --ignore-requires-python --no-deps -e . 2>/dev/null
  "$VENV/bin/pip" check >/dev/null || { "$VENV/bin/pip" check; die "pip check failed"; }
  echo "$py_hash" > "$STAMPS/python"
fi

# --- 3. JVM jars ----------------------------------------------------------------------------------
flink_lib="$("$VENV/bin/python" -c 'import pyflink, os; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')"
jar_hash=$(hash_of deploy/maven/pom.xml)
jars_present() { ls "$JARS"/flink/iceberg-flink-runtime-*.jar "$JARS"/kafka/kafka_2.13-*.jar >/dev/null 2>&1; }
if stamp_ok jars "$jar_hash" && jars_present; then
  say "jars: current"
else
  say "mvn: fetching Flink connectors, Iceberg runtime, Hadoop client, JDBC drivers, Kafka broker"
  rm -rf "$JARS"
  (cd deploy/maven && "$MVN" -B -q package -Djars.dir="$JARS") || die "Maven could not fetch the jars (see above)"
  echo "$jar_hash" > "$STAMPS/jars"
fi
# Flink's lib/ inside the venv's pyflink: the system classpath of the cluster and of `flink run`.
# JDBC drivers and Hadoop must be there; the connectors too, so a session cluster loads them once
# (per-job class loaders leaked metaspace until the TaskManager died).
# PyFlink's own runtime (flink-python, in opt/) as well: `flink run -py` ships it with each job, and per-job
# copies of Beam's classes took the TaskManager down when a job was cancelled.
for jar in "$JARS"/flink-lib/*.jar "$JARS"/flink/*.jar "$flink_lib"/../opt/flink-python-*.jar; do
  [ -f "$flink_lib/$(basename "$jar")" ] || cp "$jar" "$flink_lib/"
done

say "ready: .venv/bin/liveml ($("$VENV/bin/python" -c 'import pyflink.version as v; print("flink", v.__version__)'))"
