"""Retrieval: finding reference photos for a query photo.

The encoders that turn a photo into a vector (`encoders`, their names in `encoder_names`), the gallery
table in LanceDB that holds a reference collection's vectors (`gallery`, with the exact in-memory search
below the ANN threshold in `exact_search`), the `Retriever` that opens a table with its own encoder and
answers queries (`search`, also the batch search of `rasr search`), how gallery files become table rows
(`embedding`) and an index run from its listing to its summary (`index_run`). Nothing here restores or
scores a photo; Prefect and Ray are not imported.
"""
