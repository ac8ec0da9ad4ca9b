import sys

from keras_gss.cli import main

sys.exit(main())
