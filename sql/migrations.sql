-- Ordered migrations of the store's catalog: `migrate_N` brings a catalog of format N-1 to format N.
-- They run in one transaction, under the write lock, the first time a writing command opens an older
-- store (a reading command migrates its private copy of the catalog only). Tables a store lacks are
-- created at the current shape before they run, so each statement must hold for both shapes.

-- name: migrate_3
-- Format 3: `visualizations.act_concepts` (k > 2 concepts), which format-2 stores made before it lack;
-- the format is kept as `schema_version` (was `format`).
ALTER TABLE visualizations ADD COLUMN IF NOT EXISTS act_concepts DOUBLE[];
INSERT OR REPLACE INTO store_meta (key, value) VALUES ('schema_version', '3'::JSON);
DELETE FROM store_meta WHERE key = 'format';

-- name: migrate_4
-- Format 4: `evaluations.selection`, how an evaluation chose its images; every evaluation before it used Ineq. 2.
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS selection VARCHAR DEFAULT 'ineq2';
UPDATE evaluations SET selection = 'ineq2' WHERE selection IS NULL;
INSERT OR REPLACE INTO store_meta (key, value) VALUES ('schema_version', '4'::JSON);

-- name: migrate_5
-- Format 5: `visualizations.failure` (why a unit's visualisation failed: it never activated), and `image` may be
-- NULL (a failed unit has no picture).
ALTER TABLE visualizations ADD COLUMN IF NOT EXISTS failure VARCHAR;
ALTER TABLE visualizations ALTER COLUMN image DROP NOT NULL;
INSERT OR REPLACE INTO store_meta (key, value) VALUES ('schema_version', '5'::JSON);

-- name: migrate_6
-- Format 6: samples' Parquet files carry positive_sum (Ineq. 2's denominator), stored by compaction so that the
-- screening does not sum every attribution list again. Files written before it lack the column: the samples view
-- computes it for them with the same macro. Nothing in the catalog changes.
INSERT OR REPLACE INTO store_meta (key, value) VALUES ('schema_version', '6'::JSON);

-- name: migrate_7
-- Format 7: a store holds several layers. A layer's rows go to samples/<split>/layer=<name>/ (the files of a split
-- written before stay where they are and hold the first layer, store_meta's `layer`, until compaction moves them);
-- every other layer's shape is store_meta's `layer_shape:<name>`, its weight layer_weights-<name>.parquet. Runs,
-- recorded concepts and visualisations name their layer: the rows before it are the first layer's.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS layer VARCHAR;
ALTER TABLE channel_concepts ADD COLUMN IF NOT EXISTS layer VARCHAR;
ALTER TABLE visualizations ADD COLUMN IF NOT EXISTS layer VARCHAR;
UPDATE runs SET layer = (SELECT value ->> '$' FROM store_meta WHERE key = 'layer') WHERE layer IS NULL;
UPDATE channel_concepts SET layer = (SELECT value ->> '$' FROM store_meta WHERE key = 'layer') WHERE layer IS NULL;
UPDATE visualizations SET layer = (SELECT value ->> '$' FROM store_meta WHERE key = 'layer') WHERE layer IS NULL;
INSERT OR REPLACE INTO store_meta (key, value) VALUES ('schema_version', '7'::JSON);
