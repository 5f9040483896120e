#!/usr/bin/env bash
# Installs what sedboot's build, tests and demo need on a Debian 12 machine,
# and says what it is doing. Safe to run again: it only installs what is missing.
#
#   scripts/prereqs.sh            everything (tests and demo)
#   scripts/prereqs.sh --check    report what is missing, install nothing
set -euo pipefail

# Debian packages and the command each provides (checked before installing).
pkgs=(
  "qemu-system-x86:qemu-system-x86_64"   # QEMU boot tests and the demo (TCG, no KVM needed)
  "python3-pykmip:pykmip-server"         # Debian's PyKMIP server for KMIP interop tests
  "zstd:zstd"                            # initramfs compression
  "cpio:cpio"                            # inspecting initramfs archives
  "xz-utils:xz"                          # the kernel package's modules are XZ-compressed
  "kmod:depmod"                          # depmod builds modules.dep for the guest kernel
  "e2fsprogs:mkfs.ext4"                  # the real OS's root file system in boot tests
  "openssl:openssl"                      # PyKMIP's TLS setup in interop tests
)

check_only=false
[[ "${1:-}" == "--check" ]] && check_only=true

say() { printf 'prereqs: %s\n' "$*"; }

missing=()
for entry in "${pkgs[@]}"; do
  pkg=${entry%%:*}; cmd=${entry##*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/sbin/$cmd" ]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  if $check_only; then
    say "missing Debian packages: ${missing[*]}"
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root (or sudo) to install: ${missing[*]}"; exit 1; }
    sudo=sudo
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  say "installed ${missing[*]}"
else
  say "Debian packages present"
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || { say "Go is not installed: install Go 1.26 (https://go.dev/dl) and run again"; exit 1; }
$check_only && exit 0
say "downloading Go modules ($(go version | awk '{print $3}'))"
go mod download
