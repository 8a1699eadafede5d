#!/usr/bin/env bash
# Runs in the build VM after the provisioning scripts: records what really got installed (os-release,
# Flower, the framework packages, Python, one-context, kernel, NVIDIA driver) into $FL_FACTS for the
# manifest, and fails the build when it differs from the pins of the variant. FL_ROOT (default /) lets
# the same checks run on a mounted or chroot tree.
set -euo pipefail

: "${FL_FACTS:?}" "${FL_FLOWER_VERSION:?}" "${FL_VARIANT:?}"
root=${FL_ROOT:-/}
root=${root%/}
mkdir -p "$FL_FACTS"
cp "$root/etc/os-release" "$FL_FACTS/os-release"
facts="$FL_FACTS/facts.env"
: >"$facts"
problems=()

fact() { printf '%s=%s\n' "$1" "${2//$'\n'/ }" >>"$facts"; }

# The Flower virtualenv: the site-packages directory that holds flwr's metadata.
mapfile -t flwr_dirs < <(find "$root/" -xdev \( -path "$root/proc" -o -path "$root/sys" -o -path "$root/dev" \) \
  -prune -o -type d -name 'flwr-*.dist-info' -print 2>/dev/null | sort)
if ((${#flwr_dirs[@]} == 0)); then
  problems+=("flwr is not installed")
else
  if ((${#flwr_dirs[@]} > 1)); then
    problems+=("flwr is installed more than once: ${flwr_dirs[*]}")
  fi
  site=$(dirname "${flwr_dirs[0]}")
  site=${site//\/\//\/}
  installed=$(basename "${flwr_dirs[0]}" .dist-info)
  installed=${installed#flwr-}
  fact flower "$installed"
  fact flower_site_packages "$site"
  [ "$installed" = "$FL_FLOWER_VERSION" ] || problems+=("flwr $installed installed, $FL_FLOWER_VERSION pinned")
  venv=$(dirname "$(dirname "$(dirname "$site")")")
  if [ -f "$venv/pyvenv.cfg" ]; then
    fact python "$(sed -n 's/^version[_a-z]* *= *//p' "$venv/pyvenv.cfg" | head -n1)"
  fi
  # Every pinned framework requirement must be installed at its pinned version in the same place.
  for requirement in ${FL_FRAMEWORK_PACKAGES:-}; do
    name=${requirement%%==*}
    name=${name%%\[*}
    wanted=${requirement#*==}
    normalised=$(printf '%s' "$name" | tr 'A-Z-.' 'a-z__')
    found=""
    for dist in "$site"/*.dist-info; do
      base=$(basename "$dist" .dist-info)
      dist_name=$(printf '%s' "${base%-*}" | tr 'A-Z-.' 'a-z__')
      if [ "$dist_name" = "$normalised" ]; then
        found=${base##*-}
      fi
    done
    fact "package_$normalised" "${found:-missing}"
    [ "$found" = "$wanted" ] || problems+=("$name ${found:-missing} installed, $wanted pinned")
  done
fi

python3 --version >/dev/null 2>&1 && fact system_python "$(python3 --version 2>&1)"
fact kernel "$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1)"
case "${FL_ONE_CONTEXT:-}" in
  package | source) # the released package, or the same built from upstream source (local images)
    version=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Version}' one-context 2>/dev/null ||
      rpm --root "$root/" -q --qf '%{VERSION}-%{RELEASE}' one-context 2>/dev/null || true)
    fact one_context "${version:-missing}"
    [ -n "$version" ] || problems+=("the one-context package is not installed")
    ;;
  *) problems+=("FL_ONE_CONTEXT '${FL_ONE_CONTEXT:-}' is neither package nor source") ;;
esac
if [ "${FL_ACCEL:-cpu}" = "gpu" ]; then
  driver=$(modinfo -F version nvidia 2>/dev/null || true)
  fact nvidia_driver "${driver:-missing}"
  [ "$driver" = "${FL_NVIDIA_DRIVER:-}" ] || problems+=("NVIDIA driver ${driver:-missing} installed, ${FL_NVIDIA_DRIVER:-} pinned")
fi

if ((${#problems[@]})); then
  printf '%s: the image does not match its pins:\n' "$FL_VARIANT" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi
echo "facts: $(tr '\n' ' ' <"$facts")"
