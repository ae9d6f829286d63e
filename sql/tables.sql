-- name: store_meta
-- Key/value metadata of the store (JSON values): model, weights, layer, layer_shape, transform, dataset_roots, versions. A store made from Python objects records model object:<module>.<qualname>, weights object, transform dataset and each split's root as dataset:<module>.<qualname> of N items.
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
-- One row per disentangled channel (of `layer`): its k >= 2 concepts (lists of class ids), the chosen rho, each concept's own l-1 sources and the shared ones, the logit check, warnings (e.g. a concept channel that equals the residual).
CREATE TABLE IF NOT EXISTS runs (
    run_id          VARCHAR PRIMARY KEY,
    group_id        VARCHAR NOT NULL,
    created_at      TIMESTAMP NOT NULL,
    channel         INTEGER NOT NULL,
    concepts        INTEGER[][] NOT NULL,
    rho             DOUBLE NOT NULL,
    objective       VARCHAR NOT NULL,
    sources         INTEGER[][] NOT NULL,
    shared          INTEGER[] NOT NULL,
    max_logit_diff  DOUBLE NOT NULL,
    artifact        VARCHAR NOT NULL,
    polysem_version VARCHAR NOT NULL,
    parameters      JSON NOT NULL,
    warnings        VARCHAR[] NOT NULL,
    layer           VARCHAR
);

-- name: rho_scores
-- Eq. 6 (generalised to k concepts) for every rho of the grid, per run: objective_value over the images with a finite ratio, separated (sum over concepts of the fraction of images whose other channels are all zero), n_sources per concept, and why a rho was skipped.
CREATE TABLE IF NOT EXISTS rho_scores (
    run_id          VARCHAR NOT NULL,
    rho             DOUBLE NOT NULL,
    objective_value DOUBLE,
    separated       DOUBLE,
    n_sources       INTEGER[] NOT NULL,
    skipped         VARCHAR
);

-- name: evaluations
-- Quantitative evaluation (docs/method.md section 7) per run and concept on the val split: fractions of the original activation on c'_1..c'_k (a list) and on r, and bias_only when the original channel carries only its bias on every evaluated image of the concept; selection: how the evaluated images were chosen ('ineq2': the paper's Ineq. 2, 'authors': the authors' get_results.py, clamped per position).
CREATE TABLE IF NOT EXISTS evaluations (
    run_id        VARCHAR NOT NULL,
    concept       INTEGER NOT NULL,
    tau           DOUBLE NOT NULL,
    n_images      INTEGER NOT NULL,
    fractions     DOUBLE[],
    frac_residual DOUBLE,
    bias_only     BOOLEAN,
    evaluated_at  TIMESTAMP NOT NULL,
    selection     VARCHAR NOT NULL DEFAULT 'ineq2',
    PRIMARY KEY (run_id, concept)
);

-- name: channel_concepts
-- The concepts of each polysemantic channel (`polysem screen --concepts`), recorded per layer and parameter set: its relevant classes (Ineq. 2, tau, p) grouped by complete linkage on their ARV cosines at gamma (ties by class id), concepts sorted by smallest class id; names, sizes, and min_cosine (the lowest class-pair cosine between concepts).
CREATE TABLE IF NOT EXISTS channel_concepts (
    tau          DOUBLE NOT NULL,
    p            DOUBLE NOT NULL,
    gamma        DOUBLE NOT NULL,
    split        VARCHAR NOT NULL,
    correct_only BOOLEAN NOT NULL,
    channel      INTEGER NOT NULL,
    concepts     INTEGER[][] NOT NULL,
    names        VARCHAR[][] NOT NULL,
    sizes        INTEGER[] NOT NULL,
    min_cosine   DOUBLE,
    computed_at  TIMESTAMP NOT NULL,
    layer        VARCHAR
);

-- name: verifications
-- `polysem verify` per run (the latest): with tau, p, gamma and the images used, per new channel c'_1..c'_k (`units`) the classes it is relevant for among those the original channel was relevant for, and the lowest ARV cosine among them; resolved when no new channel has a pair below gamma.
CREATE TABLE IF NOT EXISTS verifications (
    run_id           VARCHAR PRIMARY KEY,
    tau              DOUBLE NOT NULL,
    p                DOUBLE NOT NULL,
    gamma            DOUBLE NOT NULL,
    classes          INTEGER[] NOT NULL,
    n_images         INTEGER NOT NULL,
    units            VARCHAR[] NOT NULL,
    relevant_classes INTEGER[][] NOT NULL,
    min_cosines      DOUBLE[] NOT NULL,
    resolved         BOOLEAN NOT NULL,
    verified_at      TIMESTAMP NOT NULL
);
