import sys

try:
    from ecdp.cli import main
except KeyboardInterrupt:   # Ctrl-C while the command line itself loads
    print("ecdp: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
