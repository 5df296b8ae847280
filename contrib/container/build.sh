#!/usr/bin/env bash
# Builds the ringkv container image from a release binary, without any
# base image: the root file system holds the binary, the shared libraries
# `ldd` lists for it (glibc has its DNS and files resolvers built in since
# 2.34), /etc/passwd and /etc/group with the node's user; the Containerfile
# adds an empty /data owned by that user.
#
# Usage: contrib/container/build.sh [BINARY] [TAG]
#   BINARY  default target/release/ringkv (built if missing)
#   TAG     default ringkv:latest
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
binary="${1:-$root/target/release/ringkv}"
tag="${2:-ringkv:latest}"
if [[ ! -x "$binary" ]]; then
  (cd "$root" && cargo build --release --locked)
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$ctx/data"
install -m 0755 "$binary" "$rootfs/usr/local/bin/ringkv"
# Every library the binary loads, at the path the loader looks for it.
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
  while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
printf 'root:x:0:0::/:/nonexistent\nringkv:x:65532:65532::/data:/nonexistent\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nringkv:x:65532:\n' > "$rootfs/etc/group"
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"
cp "$here/Containerfile" "$ctx/Containerfile"
podman build --quiet --tag "$tag" "$ctx"
