-- name: store_meta
-- Key/value metadata of the store (JSON values): model, weights, layer, layer_shape, transform, dataset_roots, versions.
CREATE TABLE IF NOT EXISTS store_meta (
    key   VARCHAR PRIMARY KEY,
    value JSON NOT NULL
);

-- name: class_similarity
-- WordNet path similarity of class pairs that share a relevant channel (filled by `polysem wordnet`).
CREATE TABLE IF NOT EXISTS class_similarity (
    class1          INTEGER NOT NULL,
    class2          INTEGER NOT NULL,
    path_similarity DOUBLE,
    PRIMARY KEY (class1, class2)
);

-- name: runs
-- One row per disentangled channel: the concepts, the chosen rho, the source split and the check.
CREATE TABLE IF NOT EXISTS runs (
    run_id          VARCHAR PRIMARY KEY,
    group_id        VARCHAR NOT NULL,
    created_at      TIMESTAMP NOT NULL,
    channel         INTEGER NOT NULL,
    concept1        INTEGER[] NOT NULL,
    concept2        INTEGER[] NOT NULL,
    rho             DOUBLE NOT NULL,
    objective       VARCHAR NOT NULL,
    sources1        INTEGER[] NOT NULL,
    sources2        INTEGER[] NOT NULL,
    shared          INTEGER[] NOT NULL,
    max_logit_diff  DOUBLE NOT NULL,
    artifact        VARCHAR NOT NULL,
    polysem_version VARCHAR NOT NULL,
    parameters      JSON NOT NULL
);

-- name: rho_scores
-- The Eq. 6 objective for every rho of the grid, per run.
CREATE TABLE IF NOT EXISTS rho_scores (
    run_id          VARCHAR NOT NULL,
    rho             DOUBLE NOT NULL,
    objective_value DOUBLE,
    n_sources1      INTEGER NOT NULL,
    n_sources2      INTEGER NOT NULL
);

-- name: evaluations
-- Quantitative evaluation (METHOD.md section 7) per run and concept on the val split.
CREATE TABLE IF NOT EXISTS evaluations (
    run_id        VARCHAR NOT NULL,
    concept       INTEGER NOT NULL,
    tau           DOUBLE NOT NULL,
    n_images      INTEGER NOT NULL,
    frac1         DOUBLE,
    frac2         DOUBLE,
    frac_residual DOUBLE,
    evaluated_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (run_id, concept)
);
