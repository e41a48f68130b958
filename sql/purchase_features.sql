-- Per-customer purchase behaviour as of ${as_of}: recency, frequency, monetary value (RFM),
-- tenure, basket, habits and category mix.
--
-- Reads `transactions` with the canonical columns
--   invoice, stock_code, customer_id, invoice_ts, category, quantity, unit_price
-- where an invoice starting with 'C' is a cancellation. Only rows before ${as_of} count, so
-- a feature never sees the future. Every customer with at least one row appears, including
-- customers whose only invoices were cancelled (frequency 0).
--
-- Sums and means of money are taken in DECIMAL (each value rounded to 1e-6 once, then added
-- exactly): a sum of doubles depends on the order the engine's partitions deliver them in,
-- and the same input must give the same bytes whatever the thread count.
WITH lines AS (
    SELECT
        customer_id,
        invoice,
        invoice_ts,
        category,
        quantity,
        unit_price,
        CAST(quantity * unit_price AS DECIMAL(38, 6)) AS amount,
        starts_with(invoice, 'C') AS is_cancellation
    FROM transactions
    WHERE customer_id IS NOT NULL
      AND invoice_ts < CAST(${as_of} AS TIMESTAMP)
),
as_of AS (
    SELECT date_part('epoch', CAST(${as_of} AS TIMESTAMP)) AS epoch_seconds
),
orders AS (
    SELECT
        customer_id,
        invoice,
        bool_or(is_cancellation) AS is_cancellation,
        MIN(invoice_ts) AS ordered_at,
        MAX(invoice_ts) AS last_line_at,
        SUM(amount) AS order_value,
        SUM(quantity) AS units
    FROM lines
    GROUP BY customer_id, invoice
),
-- One pass over the orders gives everything per customer: the cancellations count towards
-- the span and the cancellation rate, the purchases (orders that are not cancellations)
-- towards the rest. The mean gap between consecutive purchases telescopes to
-- (last - first) / (purchases - 1): no window sort, and no sum whose order could matter.
-- The invoices are counted from the orders, not with COUNT(DISTINCT invoice) on the lines:
-- two distinct counts in one aggregate make DataFusion keep a hash set per customer outside
-- its memory pool (1.6 GB on 1M lines), where a grouping by invoice streams and spills.
-- Active months are counted as integers (year * 12 + month), not as truncated timestamps:
-- DataFusion 55 counts distinct integers with one hash table for all customers inside its
-- memory pool, where a timestamp still goes through a row-by-row accumulator with a hash set
-- per customer (a quarter of this query's CPU at 100M lines). The count is the same.
customer_orders AS (
    SELECT
        o.customer_id,
        MIN(o.ordered_at) AS first_seen_at,
        MAX(o.last_line_at) AS last_seen_at,
        COUNT(*) AS invoices,
        COUNT(CASE WHEN o.is_cancellation THEN 1 END) AS cancelled_invoices,
        COUNT(CASE WHEN NOT o.is_cancellation THEN 1 END) AS frequency,
        SUM(o.order_value) FILTER (WHERE NOT o.is_cancellation) AS monetary,
        AVG(o.order_value) FILTER (WHERE NOT o.is_cancellation) AS avg_basket_value,
        AVG(o.units) FILTER (WHERE NOT o.is_cancellation) AS avg_basket_units,
        MIN(o.ordered_at) FILTER (WHERE NOT o.is_cancellation) AS first_purchase_at,
        MAX(o.ordered_at) FILTER (WHERE NOT o.is_cancellation) AS last_purchase_at,
        SUM(CASE WHEN NOT o.is_cancellation AND date_part('epoch', o.ordered_at) >= a.epoch_seconds - 90 * 86400 THEN 1 ELSE 0 END) AS orders_last_90d,
        SUM(CASE WHEN NOT o.is_cancellation AND date_part('epoch', o.ordered_at) >= a.epoch_seconds - 90 * 86400 THEN o.order_value ELSE CAST(0 AS DECIMAL(38, 6)) END) AS monetary_last_90d,
        COUNT(DISTINCT date_part('year', o.ordered_at) * 12 + date_part('month', o.ordered_at)) FILTER (WHERE NOT o.is_cancellation) AS active_months
    FROM orders o CROSS JOIN as_of a
    GROUP BY o.customer_id
),
category_spend AS (
    SELECT customer_id, category, SUM(amount) AS spend
    FROM lines
    WHERE NOT is_cancellation AND category IS NOT NULL AND amount > 0
    GROUP BY customer_id, category
),
category_mix AS (
    SELECT
        customer_id,
        COUNT(*) AS distinct_categories,
        MAX(spend) / SUM(spend) AS top_category_share
    FROM category_spend
    GROUP BY customer_id
)
SELECT
    s.customer_id,
    (a.epoch_seconds - date_part('epoch', COALESCE(s.last_purchase_at, s.last_seen_at))) / 86400.0 AS recency_days,
    s.frequency,
    CAST(COALESCE(s.monetary, 0) AS DOUBLE) AS monetary,
    CAST(COALESCE(s.avg_basket_value, 0) AS DOUBLE) AS avg_basket_value,
    COALESCE(s.avg_basket_units, 0.0) AS avg_basket_units,
    (a.epoch_seconds - date_part('epoch', s.first_seen_at)) / 86400.0 AS tenure_days,
    -- A customer with one purchase has no gap yet: the time since that purchase is a lower
    -- bound on it, and keeps the column free of nulls.
    CASE
        WHEN s.frequency > 1 THEN (date_part('epoch', s.last_purchase_at) - date_part('epoch', s.first_purchase_at)) / 86400.0 / (s.frequency - 1)
        ELSE (a.epoch_seconds - date_part('epoch', COALESCE(s.last_purchase_at, s.last_seen_at))) / 86400.0
    END AS days_between_orders,
    COALESCE(s.orders_last_90d, 0) AS orders_last_90d,
    CAST(COALESCE(s.monetary_last_90d, 0) AS DOUBLE) AS monetary_last_90d,
    s.active_months,
    CAST(s.cancelled_invoices AS DOUBLE) / s.invoices AS cancellation_rate,
    COALESCE(m.distinct_categories, 0) AS distinct_categories,
    CAST(COALESCE(m.top_category_share, 0) AS DOUBLE) AS top_category_share
FROM customer_orders s
CROSS JOIN as_of a
LEFT JOIN category_mix m ON m.customer_id = s.customer_id
