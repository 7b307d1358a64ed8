#!/usr/bin/env bash
# Run arm64 binaries (the Jetson, Raspberry Pi and Coral targets) under qemu-user 10
# through binfmt_misc. Idempotent.
#
# Why not bookworm's qemu-user-static (7.2): inside a container it segfaults in
# onnxruntime and LiteRT, whose cpuinfo code reads the host's x86 /proc/cpuinfo;
# qemu 8+ emulates an arm64 /proc/cpuinfo. qemu-user 10 comes from Debian's
# bookworm-backports, fetched with a project-local apt source list (nothing in /etc
# changes), unpacked under .state/qemu and registered with the F flag, so that the
# kernel opens the interpreter once and containers can use it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

qemu_dir="$EDGEAI_STATE/qemu"
qemu="$qemu_dir/root/usr/bin/qemu-aarch64"
entry=/proc/sys/fs/binfmt_misc/edgeai-qemu-aarch64

if [ ! -x "$qemu" ]; then
  log "fetching qemu-user from bookworm-backports into $qemu_dir"
  mkdir -p "$qemu_dir/apt/lists/partial" "$qemu_dir/apt/archives/partial"
  echo "deb ${EDGEAI_IMAGE_MIRROR} bookworm-backports main" > "$qemu_dir/apt/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$qemu_dir/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$qemu_dir/apt/lists" -o "Dir::Cache::Archives=$qemu_dir/apt/archives"
            -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$qemu_dir/apt" && apt-get "${apt_opts[@]}" download -qq qemu-user/bookworm-backports)
  rm -rf "$qemu_dir/root"
  dpkg-deb -x "$qemu_dir"/apt/qemu-user_*.deb "$qemu_dir/root"
  "$qemu" --version | head -1 >&2
fi

if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
fi
if [ -e "$entry" ] && ! grep -qxF "interpreter $qemu" "$entry"; then
  echo -1 > "$entry"  # registered from another checkout: replace it
fi
if [ ! -e "$entry" ]; then
  # Debian's older qemu-aarch64 entry would match the same binaries: switch it off.
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && echo 0 > /proc/sys/fs/binfmt_misc/qemu-aarch64
  printf '%s' ":edgeai-qemu-aarch64:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:$qemu:F" \
    > /proc/sys/fs/binfmt_misc/register || die "cannot register binfmt for $qemu"
  log "registered $qemu for arm64 binaries"
fi
grep -q '^enabled' "$entry" || die "binfmt entry $entry is not enabled"
