# Sourced: makes the package importable without installing it, as setup.py maps it (ecdp.kernels is
# kernels/, ecdp.export is export/): a folder of links put first on PYTHONPATH, removed at exit.
#
#     source bench/gpu/site.sh ROOT
ecdp_site=$(mktemp -d)
trap 'rm -rf "$ecdp_site"' EXIT
mkdir "$ecdp_site/ecdp"
for entry in "$1"/ecdp/*; do ln -s "$entry" "$ecdp_site/ecdp/"; done
ln -s "$1/kernels" "$ecdp_site/ecdp/kernels"
ln -s "$1/export" "$ecdp_site/ecdp/export"
export PYTHONPATH="$ecdp_site:$1"
