"""Gradient graphs, in one place: built (:mod:`.build`), verified (:mod:`.verify`), stored
and found again (:mod:`.store`), and run (:mod:`.session`)."""
