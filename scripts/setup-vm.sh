#!/usr/bin/env bash
# Installs and caches everything `cargo xtask vm-test` needs (idempotent; a second run only
# checks). Called by xtask; can be run by hand. Prints KEY=VALUE lines on stdout for xtask.
#
#   qemu (bookworm-backports, matching the preinstalled qemu-utils 10.x: installing Debian's
#         qemu-system-x86 normally conflicts with it) downloaded through a private APT
#         configuration and extracted into a private sysroot with dpkg -x
#   mmdebstrap (bookworm)                    apt-get install
#   cargo-deb                                cargo install --locked
#   two Debian cloud kernels                 apt-get download + dpkg -x (never installed)
#       bookworm 6.1 and bookworm-backports 6.12 (the current ABI named by the metapackage)
#   a bookworm root filesystem (systemd, python3, openssh-server) with both kernels' modules,
#       the Python MCP SDK 2.x installed offline from a wheelhouse built here, and an ssh key
#
# Cache: $INTERCEPTOR_VM_CACHE (default ~/.cache/interceptor-vm), keyed by package versions
# and by the hash of the inputs of the image, so a new kernel ABI or SDK pin rebuilds only
# what changed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${INTERCEPTOR_VM_CACHE:-$HOME/.cache/interceptor-vm}"
log() { printf '[setup-vm] %s\n' "$*" >&2; }
die() {
  printf '[setup-vm] ERROR: %s\n' "$*" >&2
  exit 1
}
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- host packages (plain bookworm, no conflict) ------------------------------------------
HOST_PKGS=(mmdebstrap e2fsprogs openssh-client debian-archive-keyring)
missing=()
for p in "${HOST_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq || die "apt-get update failed"
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

# --- private APT configuration with bookworm + bookworm-backports ----------------------------
# The mirror the machine already uses (first URIs: line of a deb822 source, else deb.debian.org).
MIRROR="$(grep -hE '^URIs:.*debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/etc/preferences.d" "$APT/etc/apt.conf.d"
cat >"$APT/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-backports main
EOF
cat >"$APT/apt.conf" <<EOF
Dir::Etc::SourceList "$APT/sources.list";
Dir::Etc::SourceParts "$APT/etc/sources.list.d";
Dir::Etc::Parts "$APT/etc/apt.conf.d";
Dir::Etc::PreferencesParts "$APT/etc/preferences.d";
Dir::State::Lists "$APT/lists";
Dir::Cache "$APT/cache";
Dir::Cache::Archives "$APT/archives";
APT::Get::AllowUnauthenticated "false";
APT::Sandbox::User "root";
EOF
mkdir -p "$APT/etc/sources.list.d" "$APT/cache"
export APT_CONFIG="$APT/apt.conf"
# Refresh the package lists at most once a day (or when missing).
if [ -z "$(find "$APT/lists" -maxdepth 1 -name '*backports*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
  log "apt-get update (private lists: bookworm + bookworm-backports)"
  apt-get update -qq >/dev/null || die "apt-get update with the private configuration failed"
fi
candidate() { apt-cache policy "$@" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'; }

# fetch DIR PKG=VERSION...: download exact versions into DIR (kept as the cache key).
fetch() {
  local dir="$1"
  shift
  mkdir -p "$dir"
  (cd "$dir" && apt-get download -qq "$@" >/dev/null) || die "apt-get download $* failed"
}

# --- qemu into a private sysroot ----------------------------------------------------------
QEMU_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
qkey=""
specs=()
for p in "${QEMU_PKGS[@]}"; do
  v="$(apt-cache -t bookworm-backports policy "$p" | awk '/Candidate:/ {print $2; exit}')"
  if [ "$p" = qemu-system-x86 ] || [ "$p" = qemu-system-common ] || [ "$p" = qemu-system-data ]; then
    v="$(apt-cache madison "$p" | awk -F'|' '/bookworm-backports/ {gsub(/ /,"",$2); print $2; exit}')"
  fi
  [ -n "$v" ] || die "no candidate for $p"
  specs+=("$p=$v")
  qkey="$qkey $p=$v"
done
QKEY="$(printf '%s' "$qkey" | sha256sum | cut -c1-12)"
QROOT="$CACHE/qemu-$QKEY"
if ! [ -x "$QROOT/sysroot/usr/bin/qemu-system-x86_64" ] || ! [ -f "$QROOT/.complete" ]; then
  log "downloading qemu from bookworm-backports:${qkey}"
  rm -rf "$QROOT"
  fetch "$QROOT/debs" "${specs[@]}"
  # Libraries qemu-system-x86 needs that the host lacks: resolve with the host's dpkg status.
  deps="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances -t bookworm-backports qemu-system-x86 2>/dev/null |
    awk '/^[a-z0-9]/ {print $1}' | sort -u)"
  extra=()
  for d in $deps; do
    case " ${QEMU_PKGS[*]} " in *" $d "*) continue ;; esac
    # Only shared libraries; elogind would shadow the host's libsystemd.
    case "$d" in lib*) ;; *) continue ;; esac
    case "$d" in libelogind*) continue ;; esac
    dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed' && continue
    # Virtual or unavailable names are skipped; a missing library shows up in the check below.
    v="$(candidate "$d")"
    [ -n "$v" ] && [ "$v" != "(none)" ] && extra+=("$d=$v")
  done
  if [ ${#extra[@]} -gt 0 ]; then
    log "also extracting libraries the host lacks: ${extra[*]}"
    fetch "$QROOT/debs" "${extra[@]}"
  fi
  mkdir -p "$QROOT/sysroot"
  for deb in "$QROOT"/debs/*.deb; do dpkg -x "$deb" "$QROOT/sysroot"; done
  touch "$QROOT/.complete"
fi
QEMU_LIBS="$QROOT/sysroot/usr/lib/x86_64-linux-gnu:$QROOT/sysroot/lib/x86_64-linux-gnu"
QEMU="$QROOT/sysroot/usr/bin/qemu-system-x86_64"
LD_LIBRARY_PATH="$QEMU_LIBS" "$QEMU" --version >/dev/null 2>"$QROOT/check.err" ||
  die "the extracted qemu does not run: $(head -3 "$QROOT/check.err")"

# --- cargo-deb -----------------------------------------------------------------------------
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
CARGO_DEB_VERSION=3.8.0 # 2.x cannot read edition 2024 / resolver 3 manifests
if ! "$CARGO_HOME/bin/cargo-deb" --version 2>/dev/null | grep -q " $CARGO_DEB_VERSION"; then
  log "cargo install cargo-deb $CARGO_DEB_VERSION (about 3 minutes, once)"
  cargo install --locked "cargo-deb@$CARGO_DEB_VERSION" --quiet || die "cargo install cargo-deb failed"
fi

# --- kernels -------------------------------------------------------------------------------
# kernel NAME SUITE: the cloud kernel the metapackage of SUITE currently depends on.
kernel() {
  local name="$1" suite="$2" meta pkg ver dir
  meta="$(apt-cache madison linux-image-cloud-amd64 | awk -F'|' -v s="$suite/main" '$3 ~ s" " || $3 ~ s"$" {gsub(/ /,"",$2); print $2; exit}')"
  [ -n "$meta" ] || die "no linux-image-cloud-amd64 in $suite"
  pkg="$(apt-cache show "linux-image-cloud-amd64=$meta" | awk -F': ' '/^Depends:/ {print $2; exit}' |
    tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*-cloud-amd64[^ ]*' | head -1)"
  [ -n "$pkg" ] || die "cannot read the kernel package of linux-image-cloud-amd64=$meta"
  ver="$(apt-cache madison "$pkg" | awk -F'|' -v s="$suite" '$3 ~ s {gsub(/ /,"",$2); print $2; exit}')"
  [ -n "$ver" ] || ver="$(candidate "$pkg")"
  dir="$CACHE/kernel-$pkg-$ver"
  if ! [ -f "$dir/.complete" ]; then
    log "downloading $pkg $ver ($suite)"
    rm -rf "$dir"
    fetch "$dir/debs" "$pkg=$ver"
    mkdir -p "$dir/root"
    dpkg -x "$dir"/debs/*.deb "$dir/root"
    touch "$dir/.complete"
  fi
  local vmlinuz
  vmlinuz="$(ls "$dir"/root/boot/vmlinuz-* | head -1)"
  [ -f "$vmlinuz" ] || die "no vmlinuz in $pkg"
  printf 'KERNEL_%s=%s\n' "$name" "$vmlinuz" >>"$OUT"
  printf 'KERNEL_%s_MODULES=%s\n' "$name" "$(ls -d "$dir"/root/lib/modules/* | head -1)" >>"$OUT"
  KMODS+=("$(ls -d "$dir"/root/lib/modules/* | head -1)")
}
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
KMODS=()
kernel 6_1 bookworm
kernel 6_12 bookworm-backports

# --- Python wheelhouse for the guest's MCP server (offline install) -----------------------
REQ="$ROOT/tests/peers/requirements-mcp2.txt"
PY="$ROOT/tests/peers/.venv-mcp2/bin/python"
[ -x "$PY" ] || die "$PY missing: run scripts/setup-peers.sh first"
WKEY="$(cat "$REQ" | sha256sum | cut -c1-12)"
WHEELS="$CACHE/wheels-$WKEY"
if ! [ -f "$WHEELS/.complete" ]; then
  log "building the wheelhouse for requirements-mcp2.txt (cp311 manylinux)"
  rm -rf "$WHEELS"
  "$PY" -m pip wheel --quiet --disable-pip-version-check --no-input -r "$REQ" -w "$WHEELS" ||
    die "pip wheel -r $REQ failed"
  touch "$WHEELS/.complete"
fi

# --- ssh key for the test host -> guest ------------------------------------------------------
KEY="$CACHE/id_ed25519"
[ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C interceptor-vm-test -f "$KEY"

# --- root filesystem image -------------------------------------------------------------------
GUEST_PKGS="systemd-sysv,udev,dbus,kmod,iproute2,procps,psmisc,openssh-server,python3,python3-venv,ca-certificates,sqlite3,adduser,curl"
IKEY="$(
  {
    echo "$GUEST_PKGS"
    echo "$WKEY"
    cat "$KEY.pub"
    printf '%s\n' "${KMODS[@]}"
    sed -n '/^# --- root filesystem image/,$p' "$0"
  } | sha256sum | cut -c1-12
)"
IMAGE="$CACHE/rootfs-$IKEY.img"
if ! [ -f "$IMAGE" ]; then
  log "building the guest root filesystem (mmdebstrap bookworm, ~1 minute)"
  BUILD="$(mktemp -d "$CACHE/build.XXXXXX")"
  trap 'rm -f "$OUT"; rm -rf "$BUILD"' EXIT
  # The guest uses the plain bookworm suite; the host's own APT config must not leak in.
  env -u APT_CONFIG mmdebstrap --quiet --variant=minbase --include="$GUEST_PKGS" \
    --aptopt='Acquire::Languages "none"' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$BUILD/root" "$MIRROR" || die "mmdebstrap failed"
  R="$BUILD/root"
  for m in "${KMODS[@]}"; do
    mkdir -p "$R/lib/modules"
    cp -a "$m" "$R/lib/modules/"
    chroot "$R" depmod -a "$(basename "$m")"
  done
  echo interceptor-vm >"$R/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 interceptor-vm\n' >"$R/etc/hosts"
  : >"$R/etc/machine-id"
  # Network: DHCP on the user-net NIC; wait-online for any link (one NIC).
  mkdir -p "$R/etc/systemd/network"
  printf '[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n' >"$R/etc/systemd/network/10-user.network"
  chroot "$R" systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1
  mkdir -p "$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
  printf '[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30\n' \
    >"$R/etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf"
  # Console on the serial port, root login only with the key.
  chroot "$R" passwd -d root >/dev/null
  mkdir -p "$R/root/.ssh"
  cp "$KEY.pub" "$R/root/.ssh/authorized_keys"
  chmod 700 "$R/root/.ssh"
  chmod 600 "$R/root/.ssh/authorized_keys"
  printf 'PermitRootLogin prohibit-password\nUseDNS no\n' >"$R/etc/ssh/sshd_config.d/vm-test.conf"
  chroot "$R" ssh-keygen -A >/dev/null
  # Journal kept in memory and on the console-free path (faster under TCG).
  mkdir -p "$R/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\nForwardToConsole=no\n' >"$R/etc/systemd/journald.conf.d/vm.conf"
  # The Python MCP SDK 2.x, offline, from the wheelhouse.
  mkdir -p "$R/tmp/wheels"
  cp "$WHEELS"/*.whl "$R/tmp/wheels/"
  cp "$REQ" "$R/tmp/wheels/requirements.txt"
  chroot "$R" python3 -m venv /opt/mcp-venv
  chroot "$R" /opt/mcp-venv/bin/pip install --quiet --no-index --find-links /tmp/wheels \
    -r /tmp/wheels/requirements.txt || die "installing the MCP SDK in the image failed"
  rm -rf "$R/tmp/wheels" "$R/var/cache/apt/archives/"*.deb "$R/var/lib/apt/lists/"*
  size_mb=$(($(du -sm "$R" | cut -f1) + 600))
  mkfs.ext4 -q -F -L root -d "$R" "$BUILD/rootfs.img" "${size_mb}M" || die "mkfs.ext4 -d failed"
  mv "$BUILD/rootfs.img" "$IMAGE"
  # Older images are replaced, not accumulated.
  find "$CACHE" -maxdepth 1 -name 'rootfs-*.img' ! -name "$(basename "$IMAGE")" -delete
fi

{
  echo "QEMU=$QEMU"
  echo "QEMU_LD_LIBRARY_PATH=$QEMU_LIBS"
  echo "QEMU_MODULE_DIR=$QROOT/sysroot/usr/lib/x86_64-linux-gnu/qemu"
  echo "QEMU_FIRMWARE=$QROOT/sysroot/usr/share/qemu:$QROOT/sysroot/usr/share/seabios:$QROOT/sysroot/usr/lib/ipxe/qemu"
  echo "IMAGE=$IMAGE"
  echo "SSH_KEY=$KEY"
  cat "$OUT"
}
