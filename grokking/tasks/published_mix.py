"""The structure mix of the published question-formation and tense-inflection files, as data.

Source: McCoy, Frank & Linzen's released `question.{test,gen}` and `tense.{test,gen}` (repository
`rnn-hierarchical-biases`, the files Murty et al. 2023 train and evaluate on), as measured and
tabulated in the lab's reference note `published-data-mix.md` (shared/reference/). Shares are percent
of all lines, rounded to 0.1 as published, so a table sums to 100 +- 0.2 and is normalised where it is used.

A cell is (subject modifier, what follows the main verb, marker). Modifiers: `none`, `PP`,
`RC-subj-gap` ("who doesn't giggle", "that does see the yak"), `RC-obj-gap` ("that the yak does see");
after the verb: `intransitive` or the object's modifier. The published train file was not measured:
the lab takes its mix (and dev's) to be the test file's, as `REFERENCE` says.
"""

from __future__ import annotations

Cell = tuple[str, str, str]

# Which published table each split of the lab is held against.
REFERENCE = {"train": "test", "dev": "test", "test": "test", "gen": "gen"}

CELLS: dict[str, dict[Cell, float]] = {
    "question.test": {
        ("PP", "PP", "decl"): 3.5,
        ("PP", "PP", "quest"): 3.1,
        ("PP", "RC-obj-gap", "decl"): 1.1,
        ("PP", "RC-obj-gap", "quest"): 1.1,
        ("PP", "RC-subj-gap", "decl"): 3.2,
        ("PP", "RC-subj-gap", "quest"): 3.1,
        ("PP", "intransitive", "decl"): 3.5,
        ("PP", "intransitive", "quest"): 3.2,
        ("PP", "none", "decl"): 3.0,
        ("PP", "none", "quest"): 3.2,
        ("RC-obj-gap", "PP", "decl"): 2.3,
        ("RC-obj-gap", "RC-obj-gap", "decl"): 0.7,
        ("RC-obj-gap", "RC-subj-gap", "decl"): 2.1,
        ("RC-obj-gap", "intransitive", "decl"): 1.9,
        ("RC-obj-gap", "none", "decl"): 2.0,
        ("RC-subj-gap", "PP", "decl"): 2.2,
        ("RC-subj-gap", "RC-obj-gap", "decl"): 0.8,
        ("RC-subj-gap", "RC-subj-gap", "decl"): 2.0,
        ("RC-subj-gap", "intransitive", "decl"): 2.0,
        ("RC-subj-gap", "none", "decl"): 2.1,
        ("none", "PP", "decl"): 8.1,
        ("none", "PP", "quest"): 8.4,
        ("none", "RC-obj-gap", "decl"): 2.8,
        ("none", "RC-obj-gap", "quest"): 2.4,
        ("none", "RC-subj-gap", "decl"): 8.1,
        ("none", "RC-subj-gap", "quest"): 7.8,
        ("none", "intransitive", "decl"): 0.3,
        ("none", "intransitive", "quest"): 0.3,
        ("none", "none", "decl"): 7.7,
        ("none", "none", "quest"): 7.8,
    },
    "question.gen": {
        ("RC-obj-gap", "PP", "quest"): 6.9,
        ("RC-obj-gap", "intransitive", "quest"): 19.9,
        ("RC-obj-gap", "none", "quest"): 6.6,
        ("RC-subj-gap", "PP", "quest"): 13.9,
        ("RC-subj-gap", "intransitive", "quest"): 39.4,
        ("RC-subj-gap", "none", "quest"): 13.4,
    },
    "tense.test": {
        ("PP", "PP", "PAST"): 5.2,
        ("PP", "PP", "PRESENT"): 2.7,
        ("PP", "RC-obj-gap", "PAST"): 1.7,
        ("PP", "RC-obj-gap", "PRESENT"): 0.9,
        ("PP", "RC-subj-gap", "PAST"): 3.5,
        ("PP", "RC-subj-gap", "PRESENT"): 1.6,
        ("PP", "intransitive", "PAST"): 5.5,
        ("PP", "intransitive", "PRESENT"): 2.7,
        ("PP", "none", "PAST"): 4.8,
        ("PP", "none", "PRESENT"): 2.4,
        ("RC-obj-gap", "PP", "PAST"): 1.5,
        ("RC-obj-gap", "PP", "PRESENT"): 0.9,
        ("RC-obj-gap", "RC-obj-gap", "PAST"): 0.5,
        ("RC-obj-gap", "RC-obj-gap", "PRESENT"): 0.2,
        ("RC-obj-gap", "RC-subj-gap", "PAST"): 1.3,
        ("RC-obj-gap", "RC-subj-gap", "PRESENT"): 0.5,
        ("RC-obj-gap", "intransitive", "PAST"): 1.7,
        ("RC-obj-gap", "intransitive", "PRESENT"): 0.8,
        ("RC-obj-gap", "none", "PAST"): 1.9,
        ("RC-obj-gap", "none", "PRESENT"): 0.8,
        ("RC-subj-gap", "PP", "PAST"): 3.2,
        ("RC-subj-gap", "PP", "PRESENT"): 2.6,
        ("RC-subj-gap", "RC-obj-gap", "PAST"): 1.1,
        ("RC-subj-gap", "RC-obj-gap", "PRESENT"): 0.9,
        ("RC-subj-gap", "RC-subj-gap", "PAST"): 2.5,
        ("RC-subj-gap", "RC-subj-gap", "PRESENT"): 1.7,
        ("RC-subj-gap", "intransitive", "PAST"): 3.3,
        ("RC-subj-gap", "intransitive", "PRESENT"): 2.5,
        ("RC-subj-gap", "none", "PAST"): 3.1,
        ("RC-subj-gap", "none", "PRESENT"): 2.6,
        ("none", "PP", "PAST"): 4.7,
        ("none", "PP", "PRESENT"): 5.3,
        ("none", "RC-obj-gap", "PAST"): 1.7,
        ("none", "RC-obj-gap", "PRESENT"): 1.7,
        ("none", "RC-subj-gap", "PAST"): 3.4,
        ("none", "RC-subj-gap", "PRESENT"): 3.3,
        ("none", "intransitive", "PAST"): 2.6,
        ("none", "intransitive", "PRESENT"): 2.7,
        ("none", "none", "PAST"): 5.2,
        ("none", "none", "PRESENT"): 4.9,
    },
    "tense.gen": {
        ("PP", "PP", "PRESENT"): 14.7,
        ("PP", "RC-obj-gap", "PRESENT"): 5.1,
        ("PP", "RC-subj-gap", "PRESENT"): 10.1,
        ("PP", "intransitive", "PRESENT"): 15.4,
        ("PP", "none", "PRESENT"): 15.2,
        ("RC-obj-gap", "PP", "PRESENT"): 5.0,
        ("RC-obj-gap", "RC-obj-gap", "PRESENT"): 1.4,
        ("RC-obj-gap", "RC-subj-gap", "PRESENT"): 3.1,
        ("RC-obj-gap", "intransitive", "PRESENT"): 5.2,
        ("RC-obj-gap", "none", "PRESENT"): 5.3,
        ("RC-subj-gap", "PP", "PRESENT"): 4.9,
        ("RC-subj-gap", "RC-obj-gap", "PRESENT"): 1.6,
        ("RC-subj-gap", "RC-subj-gap", "PRESENT"): 3.4,
        ("RC-subj-gap", "intransitive", "PRESENT"): 4.8,
        ("RC-subj-gap", "none", "PRESENT"): 4.9,
    },
}
# Words per declarative (without `.` and marker), percent of lines.
WORDS: dict[str, dict[int, float]] = {
    "question.test": {4: 0.6, 6: 15.5, 7: 7.7, 9: 37.1, 11: 13.8, 12: 12.7, 14: 10.5, 16: 2.2},
    "question.gen": {7: 18.8, 9: 46.7, 11: 13.7, 12: 6.8, 14: 13.9},
    "tense.test": {3: 5.3, 5: 13.4, 6: 8.2, 7: 11.8, 8: 17.2, 9: 13.0, 10: 6.0, 11: 11.8, 12: 9.9, 13: 3.3},
    "tense.gen": {6: 15.4, 7: 10.0, 8: 15.2, 9: 10.2, 10: 4.8, 11: 17.9, 12: 20.4, 13: 6.2},
}
