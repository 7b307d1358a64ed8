#!/usr/bin/env bash
# ansible-test sanity on a copy of the collection laid out as
# ansible_collections/edgeai/fleet (ansible-test needs that path), using only
# the files git would ship. Extra arguments go to ansible-test (e.g. --test pep8).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$EDGEAI_VENV/bin/activate"
cd "$EDGEAI_ROOT"

# ansible-test bootstraps pip into its sanity venvs with a script it downloads from
# a host this machine cannot reach; it uses a cached copy when there is one.
pip_version=$(grep -ohP "pip='\K[0-9.]+" "$(python -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py")
mkdir -p "$HOME/.ansible/test/cache"
cp scripts/ansible-test-get-pip.py "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"

dest="$EDGEAI_ROOT/.build/ansible_collections/edgeai/fleet"
mkdir -p "$dest"
git ls-files -co --exclude-standard | grep -v '^\.collections/' \
  | rsync -a --delete --files-from=- . "$dest/"
# Files deleted from the checkout must not linger in the copy.
(cd "$dest" && comm -13 <(cd "$EDGEAI_ROOT" && git ls-files -co --exclude-standard | sort) \
   <(find . -type f ! -path './tests/output/*' ! -path './.git/*' | sed 's|^\./||' | sort) | xargs -r rm -f)
cd "$dest"
[ -d .git ] || git init -q
ansible-test sanity --local --python "$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" "$@"
