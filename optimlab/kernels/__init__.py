"""Compiled backends of optimlab.

``optimlab.kernels.cpu``: the C++ fused CPU kernels (backend "cpp"). Importing it
registers the cpp update of every elementwise optimizer and of Adafactor
(``cpu_adafactor``) with the dispatcher; nothing is compiled until the first cpp step
(``cpp_build``: the build, its cache and the backend's availability).
"""
