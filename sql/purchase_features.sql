-- Per-customer purchase behaviour as of ${as_of}: recency, frequency, monetary value (RFM),
-- tenure, basket, habits and category mix.
--
-- Reads `transactions` with the canonical columns
--   invoice, stock_code, customer_id, invoice_ts, category, quantity, unit_price
-- where an invoice starting with 'C' is a cancellation. Only rows before ${as_of} count, so
-- a feature never sees the future. Every customer with at least one row appears, including
-- customers whose only invoices were cancelled (frequency 0).
--
-- Sums and means of money and of time gaps are taken in DECIMAL (each value rounded to 1e-6
-- once, then added exactly): a sum of doubles depends on the order the engine's partitions
-- deliver them in, and the same input must give the same bytes whatever the thread count.
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
purchases AS (
    SELECT
        customer_id,
        invoice,
        ordered_at,
        order_value,
        units,
        LAG(ordered_at) OVER (PARTITION BY customer_id ORDER BY ordered_at, invoice) AS previous_order_at
    FROM orders
    WHERE NOT is_cancellation
),
purchase_stats AS (
    SELECT
        p.customer_id,
        COUNT(*) AS frequency,
        SUM(p.order_value) AS monetary,
        AVG(p.order_value) AS avg_basket_value,
        AVG(p.units) AS avg_basket_units,
        MAX(p.ordered_at) AS last_purchase_at,
        AVG(CAST((date_part('epoch', p.ordered_at) - date_part('epoch', p.previous_order_at)) / 86400.0 AS DECIMAL(38, 6))) AS avg_days_between_orders,
        SUM(CASE WHEN date_part('epoch', p.ordered_at) >= a.epoch_seconds - 90 * 86400 THEN 1 ELSE 0 END) AS orders_last_90d,
        SUM(CASE WHEN date_part('epoch', p.ordered_at) >= a.epoch_seconds - 90 * 86400 THEN p.order_value ELSE CAST(0 AS DECIMAL(38, 6)) END) AS monetary_last_90d,
        COUNT(DISTINCT date_trunc('month', p.ordered_at)) AS active_months
    FROM purchases p CROSS JOIN as_of a
    GROUP BY p.customer_id
),
-- From the orders, not with COUNT(DISTINCT invoice) on the lines: two distinct counts in one
-- aggregate make DataFusion keep a hash set per customer outside its memory pool (1.6 GB on
-- 1M lines), where a grouping by invoice streams and spills.
customer_span AS (
    SELECT
        customer_id,
        MIN(ordered_at) AS first_seen_at,
        MAX(last_line_at) AS last_seen_at,
        COUNT(*) AS invoices,
        COUNT(CASE WHEN is_cancellation THEN 1 END) AS cancelled_invoices
    FROM orders
    GROUP BY customer_id
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
    (a.epoch_seconds - date_part('epoch', COALESCE(p.last_purchase_at, s.last_seen_at))) / 86400.0 AS recency_days,
    COALESCE(p.frequency, 0) AS frequency,
    CAST(COALESCE(p.monetary, 0) AS DOUBLE) AS monetary,
    CAST(COALESCE(p.avg_basket_value, 0) AS DOUBLE) AS avg_basket_value,
    COALESCE(p.avg_basket_units, 0.0) AS avg_basket_units,
    (a.epoch_seconds - date_part('epoch', s.first_seen_at)) / 86400.0 AS tenure_days,
    -- A customer with one purchase has no gap yet: the time since that purchase is a lower
    -- bound on it, and keeps the column free of nulls.
    COALESCE(CAST(p.avg_days_between_orders AS DOUBLE), (a.epoch_seconds - date_part('epoch', COALESCE(p.last_purchase_at, s.last_seen_at))) / 86400.0) AS days_between_orders,
    COALESCE(p.orders_last_90d, 0) AS orders_last_90d,
    CAST(COALESCE(p.monetary_last_90d, 0) AS DOUBLE) AS monetary_last_90d,
    COALESCE(p.active_months, 0) AS active_months,
    CAST(s.cancelled_invoices AS DOUBLE) / s.invoices AS cancellation_rate,
    COALESCE(m.distinct_categories, 0) AS distinct_categories,
    CAST(COALESCE(m.top_category_share, 0) AS DOUBLE) AS top_category_share
FROM customer_span s
CROSS JOIN as_of a
LEFT JOIN purchase_stats p ON p.customer_id = s.customer_id
LEFT JOIN category_mix m ON m.customer_id = s.customer_id
