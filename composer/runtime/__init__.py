"""The small runtime every stage may use, blocks included: errors, collectives, schedules, precision regions.

It imports nothing from the rest of the project, so blocks can depend on it without depending on the
language, the trainer or the command line.
"""
