-- name: relative_attribution
-- Scalar: one channel's attribution relative to the image's positive sum; NULL when that sum is 0 (no positive attribution: no channel is relevant for the image). Ineq. 2 is relative_attribution(a, positive_sum) >= tau (samples.positive_sum), here, in evaluation and in disentangle's relevance check.
CREATE OR REPLACE MACRO relative_attribution(a, total) AS
CASE WHEN total > 0 THEN a / total END;

-- name: class_channel_relevance
-- Ineq. 2 counted per (class, channel) over one split: class_id, channel, n_images (of the class), n_relevant, fraction = n_relevant / n_images. Pairs without any relevant image are left out (their fraction is 0).
CREATE OR REPLACE MACRO class_channel_relevance(tau := 0.03, split_name := 'train', correct_only := false) AS TABLE
WITH images AS (
    SELECT target AS class_id, attribution, positive_sum AS total
    FROM layer_samples
    WHERE split = split_name AND (NOT correct_only OR prediction = target)
),
attributions AS (
    SELECT class_id, generate_subscripts(attribution, 1) - 1 AS channel, unnest(attribution) AS a, total
    FROM images
),
hits AS (
    SELECT class_id, channel, count(*) AS n_relevant FROM attributions
    WHERE relative_attribution(a, total) >= tau
    GROUP BY class_id, channel
),
class_sizes AS (
    -- a second scan of one column, cheaper than materialising `images`
    SELECT target AS class_id, count(*) AS n_images FROM layer_samples
    WHERE split = split_name AND (NOT correct_only OR prediction = target)
    GROUP BY target
)
SELECT h.class_id::INTEGER AS class_id, h.channel::INTEGER AS channel, s.n_images, h.n_relevant,
       h.n_relevant / s.n_images AS fraction
FROM hits h JOIN class_sizes s USING (class_id);

-- name: relevant_pairs
-- (channel, class) pairs where the channel is relevant for the class (Ineq. 2 with fraction >= p): channel, class_id, fraction.
CREATE OR REPLACE MACRO relevant_pairs(tau := 0.03, p := 0.75, split_name := 'train', correct_only := false) AS TABLE
SELECT channel, class_id, fraction
FROM class_channel_relevance(tau := tau, split_name := split_name, correct_only := correct_only)
WHERE fraction >= p;

-- name: class_means_of
-- Per class of one split: class_id, n_images and mean_input_sum, the element-wise mean of input_sum (DOUBLE list).
CREATE OR REPLACE MACRO class_means_of(split_name := 'train', correct_only := false) AS TABLE
WITH elements AS (
    SELECT target, generate_subscripts(input_sum, 1) AS i, unnest(input_sum) AS v
    FROM layer_samples
    WHERE split = split_name AND (NOT correct_only OR prediction = target)
),
means AS (
    -- every image has one value per i, so count(*) is the class's image count
    SELECT target, i, avg(v) AS m, count(*) AS n FROM elements GROUP BY target, i
)
SELECT target::INTEGER AS class_id, any_value(n) AS n_images, list(m ORDER BY i) AS mean_input_sum
FROM means
GROUP BY target;

-- name: class_means
-- class_means_of() on the train split with all images: class_id, n_images, mean_input_sum.
CREATE OR REPLACE VIEW class_means AS
SELECT * FROM class_means_of();

-- name: arv_of
-- Scalar: the ARV (docs/method.md section 3) from a weight row and a mean input_sum, summing each input channel's `kernel_window` offsets.
CREATE OR REPLACE MACRO arv_of(weight, mean_input_sum, kernel_window) AS
CASE WHEN kernel_window = 1
     THEN list_transform(weight, lambda w, i: w * mean_input_sum[i])
     ELSE list_transform(range(len(weight) // kernel_window),
                         lambda c: list_sum(list_transform(weight[c * kernel_window + 1 : (c + 1) * kernel_window],
                                                           lambda w, j: w * mean_input_sum[c * kernel_window + j])))
END;

-- name: arv
-- The average relevance vector of every channel for every class of the train split: channel, class_id, arv (DOUBLE list, length C_{l-1}). Lazy: a filter on channel and class_id reads one weight row and one class's images.
CREATE OR REPLACE VIEW arv AS
SELECT w.channel, m.class_id, arv_of(w.weight, m.mean_input_sum, li."window") AS arv
FROM layer_weights w CROSS JOIN class_means m CROSS JOIN layer_info li;

-- name: arv_cosine
-- For every pair of classes relevant for the same channel (class1 < class2): channel, class1, class2, cosine of their ARVs, fraction1, fraction2.
CREATE OR REPLACE MACRO arv_cosine(tau := 0.03, p := 0.75, split_name := 'train', correct_only := false) AS TABLE
WITH rel AS MATERIALIZED (
    SELECT * FROM relevant_pairs(tau := tau, p := p, split_name := split_name, correct_only := correct_only)
),
means AS MATERIALIZED (
    SELECT * FROM class_means_of(split_name := split_name, correct_only := correct_only)
    WHERE class_id IN (SELECT class_id FROM rel)
),
arvs AS MATERIALIZED (
    SELECT r.channel, r.class_id, r.fraction, arv_of(w.weight, m.mean_input_sum, li."window") AS arv
    FROM rel r
    JOIN means m USING (class_id)
    JOIN layer_weights w ON w.channel = r.channel
    CROSS JOIN layer_info li
)
SELECT a.channel, a.class_id AS class1, b.class_id AS class2, list_cosine_similarity(a.arv, b.arv) AS cosine,
       a.fraction AS fraction1, b.fraction AS fraction2
FROM arvs a JOIN arvs b ON a.channel = b.channel AND a.class_id < b.class_id;

-- name: polysemantic_pairs
-- Candidates of Theorem 3.1, lowest cosine first: channel, class1, class2, cosine (< gamma), fraction1, fraction2, name1, name2, wordnet_similarity (NULL until `polysem wordnet` ran).
CREATE OR REPLACE MACRO polysemantic_pairs(tau := 0.03, p := 0.75, gamma := 0.5, split_name := 'train', correct_only := false) AS TABLE
SELECT c.channel, c.class1, c.class2, c.cosine, c.fraction1, c.fraction2,
       k1.name AS name1, k2.name AS name2, s.path_similarity AS wordnet_similarity
FROM arv_cosine(tau := tau, p := p, split_name := split_name, correct_only := correct_only) c
JOIN classes k1 ON k1.class_id = c.class1
JOIN classes k2 ON k2.class_id = c.class2
LEFT JOIN class_similarity s ON s.class1 = c.class1 AND s.class2 = c.class2
WHERE c.cosine < gamma
ORDER BY c.cosine, c.channel, c.class1, c.class2;

-- name: channel_attribution
-- Scalar: the attribution of channel c (0-based, as everywhere in polysem) from an image's attribution list; DuckDB lists are 1-based, so `attribution[c + 1]` in one place.
CREATE OR REPLACE MACRO channel_attribution(attribution, c) AS
attribution[c + 1];

-- name: class_channel_means
-- Per class of the train split and channel: class_id, channel (0-based), mean_attribution over the class's images. Lazy: a filter on class_id reads only that class's row groups (the files are class-ordered after compaction).
CREATE OR REPLACE VIEW class_channel_means AS
WITH attributions AS (
    SELECT target AS class_id, generate_subscripts(attribution, 1) - 1 AS channel, unnest(attribution) AS a
    FROM layer_samples
    WHERE split = 'train'
)
SELECT class_id::INTEGER AS class_id, channel::INTEGER AS channel, avg(a) AS mean_attribution
FROM attributions
GROUP BY class_id, channel;

-- name: screen_sweep
-- The screening at every combination of $taus x $ps x $gammas in one scan of the attributions: tau, p, gamma, relevant_pairs ((channel, class) pairs meeting Ineq. 2), shared_channels (channels relevant for two or more classes), min_cosine (lowest ARV cosine among their class pairs), candidate_pairs and candidate_channels (pairs below gamma and their channels: what `polysem screen` would list).
CREATE OR REPLACE MACRO screen_sweep(taus, ps, gammas, split_name := 'train', correct_only := false) AS TABLE
WITH images AS (
    SELECT target AS class_id, attribution, positive_sum AS total
    FROM layer_samples
    WHERE split = split_name AND (NOT correct_only OR prediction = target)
),
attributions AS (
    SELECT class_id, generate_subscripts(attribution, 1) - 1 AS channel, unnest(attribution) AS a, total FROM images
),
levels AS (
    -- how many of the sorted taus each attribution reaches: one pass serves every tau
    SELECT class_id, channel, len(list_filter(list_sort(taus), lambda t: relative_attribution(a, total) >= t)) AS level,
           count(*) AS n
    FROM attributions GROUP BY ALL
),
class_sizes AS (
    SELECT class_id, count(*) AS n_images FROM images GROUP BY class_id
),
grid_taus AS (
    SELECT i, list_sort(taus)[i] AS tau FROM range(1, len(taus) + 1) t(i)
),
fractions AS (
    SELECT g.tau, l.class_id, l.channel, sum(l.n) FILTER (l.level >= g.i) / any_value(s.n_images) AS fraction
    FROM levels l CROSS JOIN grid_taus g JOIN class_sizes s USING (class_id)
    GROUP BY g.tau, l.class_id, l.channel
),
rel AS MATERIALIZED (
    SELECT f.tau, p.p, f.channel::INTEGER AS channel, f.class_id::INTEGER AS class_id
    FROM fractions f CROSS JOIN (SELECT unnest(ps) AS p) p
    WHERE f.fraction >= p.p
),
shared AS MATERIALIZED (
    SELECT * FROM rel WHERE (tau, p, channel) IN (SELECT tau, p, channel FROM rel GROUP BY ALL HAVING count(*) > 1)
),
means AS MATERIALIZED (
    SELECT * FROM class_means_of(split_name := split_name, correct_only := correct_only)
    WHERE class_id IN (SELECT class_id FROM shared)
),
arvs AS MATERIALIZED (
    SELECT DISTINCT s.channel, s.class_id, arv_of(w.weight, m.mean_input_sum, li."window") AS arv
    FROM (SELECT DISTINCT channel, class_id FROM shared) s
    JOIN means m USING (class_id) JOIN layer_weights w ON w.channel = s.channel CROSS JOIN layer_info li
),
pairs AS (
    SELECT a.tau, a.p, a.channel, list_cosine_similarity(x.arv, y.arv) AS cosine
    FROM shared a JOIN shared b ON a.tau = b.tau AND a.p = b.p AND a.channel = b.channel AND a.class_id < b.class_id
    JOIN arvs x ON x.channel = a.channel AND x.class_id = a.class_id
    JOIN arvs y ON y.channel = b.channel AND y.class_id = b.class_id
),
settings AS (
    SELECT t.tau, p.p, g.gamma
    FROM grid_taus t CROSS JOIN (SELECT unnest(ps) AS p) p CROSS JOIN (SELECT unnest(gammas) AS gamma) g
)
SELECT s.tau, s.p, s.gamma,
       (SELECT count(*) FROM rel r WHERE r.tau = s.tau AND r.p = s.p) AS relevant_pairs,
       (SELECT count(DISTINCT channel) FROM shared h WHERE h.tau = s.tau AND h.p = s.p) AS shared_channels,
       (SELECT min(cosine) FROM pairs q WHERE q.tau = s.tau AND q.p = s.p) AS min_cosine,
       (SELECT count(*) FROM pairs q WHERE q.tau = s.tau AND q.p = s.p AND q.cosine < s.gamma) AS candidate_pairs,
       (SELECT count(DISTINCT channel) FROM pairs q WHERE q.tau = s.tau AND q.p = s.p AND q.cosine < s.gamma)
           AS candidate_channels
FROM settings s
ORDER BY s.tau, s.p, s.gamma;
