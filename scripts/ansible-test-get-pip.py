"""Offline stand-in for ansible-test's pip bootstrap script.

ansible-test creates its sanity venvs without pip and then runs get-pip.py,
which it downloads from a host this machine cannot reach. It looks for a cached
copy at ~/.ansible/test/cache/get_pip_<version>.py first; scripts/test.sh puts
this file there. It does what get-pip.py does, with the pip bundled in Python's
ensurepip as the seed: install pip, then run `pip install` with the arguments
ansible-test passes (the pinned pip version and its options), from PyPI.
"""
import subprocess
import sys

# get-pip.py's own options, which pip install does not know.
GET_PIP_ONLY = ('--no-setuptools', '--no-wheel')

subprocess.check_call([sys.executable, '-m', 'ensurepip', '--upgrade', '--default-pip'],
                      stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install', '--upgrade'] + args))
