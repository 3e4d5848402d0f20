"""The flywheel: traffic and cases become training data, training data becomes adapter versions,
and a suite decides which version an alias serves."""
