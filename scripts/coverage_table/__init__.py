"""The coverage table's parts (scripts/coverage.py is the command): the rows (:mod:`.rows`), one cell's outcome and
the in-process command line (:mod:`.cell`), the methods on a row's store and dictionary (:mod:`.lm_methods`) and on
its model (:mod:`.model_methods`), and the table with its markdown (:mod:`.table`)."""
