# shellcheck shell=bash
# Installing what a script needs, shared by scripts/setup and scripts/demo.sh (sourced, not
# run). On Debian or Ubuntu, with apt-get, as root or through sudo; where that cannot be
# done (no apt-get, or neither root nor sudo), it says the one command to run and exits 1.
# The sourcing script defines `say` (its own prefix on every line); RUN_AGAIN, if set, is
# the command the messages tell to run again (default: the sourcing script).

apt_updated=no

# Runs a command as root: directly when root, else through sudo.
as_root() {
    if ((EUID == 0)); then
        "$@"
    else
        sudo "$@"
    fi
}

# apt_install PACKAGE...: installs the packages, or says how and exits 1.
apt_install() {
    if ! command -v apt-get >/dev/null; then
        say "$* missing, and there is no apt-get here: install it with your package manager," \
            "then run ${RUN_AGAIN:-$0} again" >&2
        exit 1
    fi
    if ((EUID != 0)) && ! command -v sudo >/dev/null; then
        say "$* missing, and installing needs root (there is no sudo); run as root:" >&2
        say "    apt-get update && apt-get install -y $*" >&2
        exit 1
    fi
    if [[ $apt_updated == no ]]; then
        as_root apt-get update -qq
        apt_updated=yes
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# need_rust: the Rust toolchain (cargo) is there, or it says the one command that installs
# it and exits 1. Not installed from apt: Debian's cargo is too old for this project (it
# needs Rust 1.86 or later; rustup installs the current release).
need_rust() {
    if ! command -v cargo >/dev/null; then
        say "cargo is missing: install Rust (for this user) with" >&2
        say "    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" >&2
        say "then open a new shell (or: . \"\$HOME/.cargo/env\") and run ${RUN_AGAIN:-$0} again" >&2
        exit 1
    fi
}
