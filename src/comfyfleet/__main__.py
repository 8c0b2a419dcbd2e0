"""``python -m comfyfleet …``: the same CLI as the ``comfyfleet`` console script.

The local provider starts provisions as ``sys.executable -m comfyfleet provision …``, which
works in any environment that can import the package, installed as a script or not.
"""

from comfyfleet.cli import main

if __name__ == "__main__":
    main()
