#!/usr/bin/env bash
# deadline_venv.sh — a virtualenv with the official AWS Deadline Cloud client
# (PyPI `deadline`, pinned), for interop tests and benchmarks.
#
#   source scripted_tests/lib/deadline_venv.sh     # exports DEADLINE_PY, DEADLINE_VENV
#   scripted_tests/lib/deadline_venv.sh            # prints the venv's python path
#
# Idempotent: the venv is created once at
#   ${ATTACHE_TOOLS_DIR:-$HOME/.cache/attache-tools}/venv-deadline-<version>
# and later runs only check a stamp file (near-instant, no pip, no network).
# Environment:
#   ATTACHE_TOOLS_DIR       where tool installs live (default ~/.cache/attache-tools)
#   ATTACHE_DEADLINE_VERSION  override the pinned version (default 0.60.10)
#   ATTACHE_PYTHON          base interpreter used to create the venv (default python3)
#   ATTACHE_VENV_REBUILD=1  delete and recreate the venv
# Progress and errors go to stderr; stdout (when executed) is only the python path.

_attache_deadline_venv() {
    local version="${ATTACHE_DEADLINE_VERSION:-0.60.10}"
    local tools="${ATTACHE_TOOLS_DIR:-$HOME/.cache/attache-tools}"
    local venv="$tools/venv-deadline-$version"
    local py="$venv/bin/python"
    local stamp="$venv/.attache-deadline-ok"
    local base="${ATTACHE_PYTHON:-python3}"

    # Fast path: stamp written after a verified install names the version.
    if [[ "${ATTACHE_VENV_REBUILD:-0}" != 1 && -x "$py" && -f "$stamp" ]] \
        && [[ "$(cat "$stamp" 2>/dev/null)" == "deadline==$version" ]]; then
        DEADLINE_VENV="$venv"
        DEADLINE_PY="$py"
        return 0
    fi

    mkdir -p "$tools" || return 1
    # Serialize concurrent creators (two CI scripts at once) when flock exists.
    local lockfd
    if command -v flock >/dev/null 2>&1; then
        exec {lockfd}>"$tools/.venv-deadline-$version.lock" || return 1
        flock "$lockfd" || return 1
    fi

    local rc=0
    (
        set -e
        # Re-check under the lock: another process may have finished meanwhile.
        if [[ "${ATTACHE_VENV_REBUILD:-0}" != 1 && -x "$py" && -f "$stamp" ]] \
            && [[ "$(cat "$stamp")" == "deadline==$version" ]]; then
            exit 0
        fi
        if [[ -x "$py" && "${ATTACHE_VENV_REBUILD:-0}" != 1 ]] \
            && "$py" - "$version" >/dev/null 2>&1 <<'EOF'
import sys, importlib.metadata as m
sys.exit(0 if m.version("deadline") == sys.argv[1] else 1)
EOF
        then
            # Installed and right version, only the stamp is missing.
            echo "deadline==$version" >"$stamp"
            exit 0
        fi
        echo "deadline_venv: creating $venv (deadline==$version)" >&2
        rm -rf "$venv"
        "$base" -m venv "$venv" >&2
        "$py" -m pip install --quiet --disable-pip-version-check \
            "deadline==$version" >&2
        # Verify the job-attachments API imports before declaring success.
        "$py" -c 'import deadline.job_attachments.upload, deadline.job_attachments.models' >&2
        local got
        got="$("$py" -c 'import importlib.metadata as m; print(m.version("deadline"))')"
        if [[ "$got" != "$version" ]]; then
            echo "deadline_venv: installed deadline $got, wanted $version" >&2
            exit 1
        fi
        echo "deadline==$version" >"$stamp"
        echo "deadline_venv: ready: $py" >&2
    ) || rc=$?

    if [[ -n "${lockfd:-}" ]]; then
        exec {lockfd}>&-
    fi
    if [[ $rc -ne 0 ]]; then
        echo "deadline_venv: failed to create $venv (exit $rc)" >&2
        return "$rc"
    fi
    DEADLINE_VENV="$venv"
    DEADLINE_PY="$py"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: export into the caller's shell; never exit it.
    if _attache_deadline_venv; then
        export DEADLINE_PY DEADLINE_VENV
    else
        return 1
    fi
else
    set -euo pipefail
    _attache_deadline_venv
    export DEADLINE_PY DEADLINE_VENV
    printf '%s\n' "$DEADLINE_PY"
fi
