"""Exercise checks: ``checks.q_sample(q_sample)`` runs your function beside minildm's and says what differs.

The mechanism is in ``core`` (``compare`` for functions, ``check_value`` for values); each
lesson's checks are in ``lessonNN`` and are re-exported here, so a notebook only needs
``from minildm import checks``.
"""

from .core import CheckFailed, Mistake, check_value, compare
from .lesson00 import *  # noqa: F403  (each lesson module lists its checks in __all__)
from .lesson01 import *  # noqa: F403
from .lesson02 import *  # noqa: F403
from .lesson03 import *  # noqa: F403
from .lesson04 import *  # noqa: F403
from .lesson05 import *  # noqa: F403
from .lesson06 import *  # noqa: F403
from .lesson07 import *  # noqa: F403
from .lesson08 import *  # noqa: F403
from .lesson09 import *  # noqa: F403
from .lesson10 import *  # noqa: F403
from .lesson11 import *  # noqa: F403
from .lesson12 import *  # noqa: F403
from .lesson13 import *  # noqa: F403
from .lesson14 import *  # noqa: F403
