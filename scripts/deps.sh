#!/usr/bin/env bash
# deps.sh PKG...: make sure these Debian packages are installed, installing the missing ones
# with apt-get (as root, or through sudo), or stop with one line naming them.
set -euo pipefail
missing=()
for p in "$@"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null && sudo -n true 2>/dev/null || [ -t 0 ]; then
		sudo="sudo"
	fi
fi
if ! command -v apt-get >/dev/null || { [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; }; then
	echo "missing packages: ${missing[*]}: install them (apt-get install ${missing[*]}) and run this again" >&2
	exit 1
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
	{ $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; } ||
	{ echo "missing packages: ${missing[*]}: apt-get could not install them: install them and run this again" >&2; exit 1; }
