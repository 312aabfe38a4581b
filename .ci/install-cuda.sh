#!/usr/bin/env bash
# Installs Debian's CUDA 11.8 toolkit (non-free component) when nvcc is absent, so CI compiles
# every CUDA source. Idempotent; needs root (CI runs as root).
set -euo pipefail
if command -v nvcc >/dev/null 2>&1; then echo "nvcc present: $(command -v nvcc)"; exit 0; fi
src=/etc/apt/sources.list.d/llmnative-nonfree.sources
if [ ! -f "$src" ]; then
  cat > "$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit >/dev/null
command -v nvcc && nvcc --version | tail -n 2
