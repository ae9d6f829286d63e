-- name: run_activations
-- Per image of a run's concept classes in a split: concept (1 or 2), relative_attribution of the original channel, and the spatially summed activations of the original channel, c'1, c'2 and the residual r, from input_sum (they are linear in it).
CREATE OR REPLACE MACRO run_activations(run, split_name := 'val') AS TABLE
WITH r AS (
    SELECT * FROM runs WHERE run_id = run
),
weights AS (
    SELECT lw.weight::DOUBLE[] AS w0, coalesce(lw.bias, 0) AS b, li."window" AS k,
           r.sources1, r.sources2
    FROM r JOIN layer_weights lw ON lw.channel = r.channel CROSS JOIN layer_info li
),
masked AS (
    SELECT w0, b,
           list_transform(w0, lambda x, j: CASE WHEN list_contains(sources2, (j - 1) // k) THEN 0 ELSE x END) AS w1,
           list_transform(w0, lambda x, j: CASE WHEN list_contains(sources1, (j - 1) // k) THEN 0 ELSE x END) AS w2,
           list_transform(w0, lambda x, j: CASE WHEN list_contains(sources1, (j - 1) // k)
                                                  OR list_contains(sources2, (j - 1) // k) THEN 0 ELSE x END) AS wr
    FROM weights
)
SELECT s.image_id, s.path, s.target,
       CASE WHEN list_contains(r.concept1, s.target) THEN 1 ELSE 2 END AS concept,
       relative_attribution(s.attribution[r.channel + 1], positive_sum(s.attribution)) AS relative_attribution,
       list_inner_product(m.w0, s.input_sum::DOUBLE[]) + m.b * s.positions AS activation,
       list_inner_product(m.w1, s.input_sum::DOUBLE[]) + m.b * s.positions AS activation1,
       list_inner_product(m.w2, s.input_sum::DOUBLE[]) + m.b * s.positions AS activation2,
       list_inner_product(m.wr, s.input_sum::DOUBLE[]) + m.b * s.positions AS activation_residual
FROM samples s CROSS JOIN r CROSS JOIN masked m
WHERE s.split = split_name AND (list_contains(r.concept1, s.target) OR list_contains(r.concept2, s.target));

-- name: evaluation_summary
-- METHOD.md section 7 per concept of a run: over its images whose original channel has relative attribution >= tau, n_images and the mean fraction of the original activation carried by c'1, c'2 and r.
CREATE OR REPLACE MACRO evaluation_summary(run, tau := 0.03, split_name := 'val') AS TABLE
SELECT concept, count(*) AS n_images,
       avg(activation1 / activation) AS frac1,
       avg(activation2 / activation) AS frac2,
       avg(activation_residual / activation) AS frac_residual
FROM run_activations(run, split_name := split_name)
WHERE relative_attribution >= tau
GROUP BY concept
ORDER BY concept;

-- name: run_summary
-- One row per run with its evaluation: the paper's quantitative table (concept c of the run: n images, fractions on c'1 and c'2).
CREATE OR REPLACE VIEW run_summary AS
SELECT r.run_id, r.created_at, r.channel, r.concept1, r.concept2, r.rho, r.objective,
       len(r.sources1) AS n_sources1, len(r.sources2) AS n_sources2, len(r.shared) AS n_shared, r.max_logit_diff,
       e1.n_images AS c1_images, e1.frac1 AS c1_frac1, e1.frac2 AS c1_frac2,
       e2.n_images AS c2_images, e2.frac1 AS c2_frac1, e2.frac2 AS c2_frac2
FROM runs r
LEFT JOIN evaluations e1 ON e1.run_id = r.run_id AND e1.concept = 1
LEFT JOIN evaluations e2 ON e2.run_id = r.run_id AND e2.concept = 2
ORDER BY r.created_at, r.channel;
