//! Minimum-cost assignment of rows to columns (the linear assignment problem), by the
//! shortest-augmenting-path form of the Hungarian method (Jonker–Volgenant style, O(n²·m) for
//! n ≤ m).
//!
//! Why it is here: a new run's k-means centroids are matched to the previous run's (cost =
//! distance between centroids) so that segment ids keep their meaning from run to run.
//!
//! # Tie-breaking
//! The result depends on the matrix alone (no randomness, no hashing, no threads). Among
//! matchings of equal total cost the algorithm's fixed order decides: rows are added one at a
//! time in increasing index order, and each new row's cheapest augmenting path, among equally
//! cheap ones, ends at the lowest-index free column reached (a free column is preferred to
//! exploring a matched one at equal cost). So with all costs equal row i gets column i. With
//! more rows than columns the problem is solved on the transpose (columns added in increasing
//! order, each taking a row); the rows left over are unmatched.

use ndarray::ArrayView2;

/// What can be wrong with a cost matrix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AssignmentError {
    #[error(
        "the assignment cost at row {row}, column {column} (both counted from 0) is not finite \
         ({value}); every cost must be a finite number (use a large finite cost to discourage \
         a pair)"
    )]
    NonFiniteCost {
        row: usize,
        column: usize,
        value: f64,
    },
}

/// The matching of rows to columns with the lowest total cost: for each row its column, or
/// `None` for the `rows − cols` rows left unmatched when there are more rows than columns.
/// Every column is used at most once, and `min(rows, cols)` rows are matched. Ties are broken
/// as the module documentation says.
pub fn min_cost_assignment(
    cost: ArrayView2<'_, f64>,
) -> Result<Vec<Option<usize>>, AssignmentError> {
    if let Some(((row, column), &value)) = cost.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(AssignmentError::NonFiniteCost { row, column, value });
    }
    let (n_rows, n_cols) = cost.dim();
    if n_rows <= n_cols {
        Ok(assign_rows(cost).into_iter().map(Some).collect())
    } else {
        let mut row_of_col = vec![None; n_rows];
        for (col, row) in assign_rows(cost.t()).into_iter().enumerate() {
            row_of_col[row] = Some(col);
        }
        Ok(row_of_col)
    }
}

/// The column of every row, for a matrix with no more rows than columns and finite costs.
///
/// Rows are added one by one; for each, a Dijkstra-like search over columns with reduced costs
/// `cost[i][j] − u[i] − v[j]` (the dual potentials, kept feasible) finds the cheapest path to
/// a free column, and the matching is flipped along it. Indices are 1-based inside, with row
/// and column 0 as the search's virtual start, as in the classic formulation.
fn assign_rows(cost: ArrayView2<'_, f64>) -> Vec<usize> {
    let (n, m) = cost.dim();
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; m + 1];
    // row_of[j]: the row (1-based) matched to column j, 0 when free; row_of[0] is the row
    // being added.
    let mut row_of = vec![0usize; m + 1];
    // previous[j]: the column before j on the current shortest path.
    let mut previous = vec![0usize; m + 1];
    for i in 1..=n {
        row_of[0] = i;
        let mut column = 0;
        let mut min_reduced = vec![f64::INFINITY; m + 1];
        let mut visited = vec![false; m + 1];
        loop {
            visited[column] = true;
            let row = row_of[column];
            let mut delta = f64::INFINITY;
            let mut next = 0;
            for j in 1..=m {
                if visited[j] {
                    continue;
                }
                let reduced = cost[[row - 1, j - 1]] - u[row] - v[j];
                if reduced < min_reduced[j] {
                    min_reduced[j] = reduced;
                    previous[j] = column;
                }
                // A free column wins a tie: the path ends there, which fixes the tie-breaking
                // rule of the module documentation (and saves work).
                let better = min_reduced[j] < delta
                    || (min_reduced[j] == delta && row_of[j] == 0 && row_of[next] != 0);
                if better {
                    delta = min_reduced[j];
                    next = j;
                }
            }
            for j in 0..=m {
                if visited[j] {
                    u[row_of[j]] += delta;
                    v[j] -= delta;
                } else {
                    min_reduced[j] -= delta;
                }
            }
            column = next;
            if row_of[column] == 0 {
                break;
            }
        }
        // Flip the matching along the path back to the start.
        while column != 0 {
            let before = previous[column];
            row_of[column] = row_of[before];
            column = before;
        }
    }
    let mut col_of = vec![0; n];
    for j in 1..=m {
        if row_of[j] != 0 {
            col_of[row_of[j] - 1] = j - 1;
        }
    }
    col_of
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};
    use proptest::prelude::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn total(cost: &Array2<f64>, assignment: &[Option<usize>]) -> f64 {
        assignment
            .iter()
            .enumerate()
            .filter_map(|(i, j)| j.map(|j| cost[[i, j]]))
            .sum()
    }

    /// The lowest total cost over every way of matching min(rows, cols) pairs.
    fn brute_force_min(cost: &Array2<f64>) -> f64 {
        let (rows, cols) = cost.dim();
        if rows > cols {
            return brute_force_min(&cost.t().to_owned());
        }
        fn search(cost: &Array2<f64>, row: usize, used: &mut Vec<bool>, sum: f64) -> f64 {
            if row == cost.nrows() {
                return sum;
            }
            let mut best = f64::INFINITY;
            for col in 0..cost.ncols() {
                if !used[col] {
                    used[col] = true;
                    best = best.min(search(cost, row + 1, used, sum + cost[[row, col]]));
                    used[col] = false;
                }
            }
            best
        }
        search(cost, 0, &mut vec![false; cols], 0.0)
    }

    fn is_a_matching(assignment: &[Option<usize>], rows: usize, cols: usize) -> bool {
        let mut used = vec![false; cols];
        let matched = assignment.iter().flatten().count();
        assignment.len() == rows
            && matched == rows.min(cols)
            && assignment.iter().flatten().all(|&j| {
                let fresh = j < cols && !used[j];
                if j < cols {
                    used[j] = true;
                }
                fresh
            })
    }

    fn cost_matrix(
        values: impl Strategy<Value = f64> + Clone,
    ) -> impl Strategy<Value = Array2<f64>> {
        (0usize..=6, 0usize..=6).prop_flat_map(move |(rows, cols)| {
            proptest::collection::vec(values.clone(), rows * cols).prop_map(move |v| {
                Array2::from_shape_vec((rows, cols), v).unwrap_or_else(|_| Array2::zeros((0, 0)))
            })
        })
    }

    fn check_against_brute_force(cost: &Array2<f64>) -> Result<(), TestCaseError> {
        let assignment =
            min_cost_assignment(cost.view()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(is_a_matching(&assignment, cost.nrows(), cost.ncols()));
        let best = brute_force_min(cost);
        let got = total(cost, &assignment);
        prop_assert!(
            (got - best).abs() <= 1e-9 * (1.0 + best.abs()),
            "{got} vs {best} for\n{cost}"
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn the_matching_costs_as_little_as_the_best_permutation_with_many_ties(
            cost in cost_matrix((0u8..4).prop_map(f64::from))
        ) {
            check_against_brute_force(&cost)?;
        }

        #[test]
        fn the_matching_costs_as_little_as_the_best_permutation_with_any_costs(
            cost in cost_matrix(-1e3..1e3f64)
        ) {
            check_against_brute_force(&cost)?;
        }
    }

    #[test]
    fn a_hand_solved_example() -> TestResult {
        // scipy.optimize.linear_sum_assignment's documented example: 1 + 2 + 2 = 5.
        let cost = array![[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]];
        assert_eq!(
            min_cost_assignment(cost.view())?,
            vec![Some(1), Some(0), Some(2)]
        );
        // Greedy would give row 0 its cheapest column (0) and pay 100 for row 1.
        let cost = array![[1.0, 2.0], [1.0, 100.0]];
        assert_eq!(min_cost_assignment(cost.view())?, vec![Some(1), Some(0)]);
        Ok(())
    }

    #[test]
    fn more_rows_than_columns_leaves_the_costliest_rows_unmatched() -> TestResult {
        let cost = array![[5.0, 9.0], [1.0, 8.0], [7.0, 2.0]];
        assert_eq!(
            min_cost_assignment(cost.view())?,
            vec![None, Some(0), Some(1)]
        );
        // Fewer rows than columns: every row is matched, some columns are not used.
        let cost = array![[5.0, 1.0, 7.0], [9.0, 8.0, 2.0]];
        assert_eq!(min_cost_assignment(cost.view())?, vec![Some(1), Some(2)]);
        Ok(())
    }

    #[test]
    fn ties_go_by_row_order_and_the_lowest_free_column() -> TestResult {
        assert_eq!(
            min_cost_assignment(Array2::zeros((3, 3)).view())?,
            vec![Some(0), Some(1), Some(2)]
        );
        assert_eq!(
            min_cost_assignment(Array2::from_elem((2, 4), 7.0).view())?,
            vec![Some(0), Some(1)]
        );
        // Transposed: each column picks the lowest free row, the rest are unmatched.
        assert_eq!(
            min_cost_assignment(Array2::from_elem((4, 2), 7.0).view())?,
            vec![Some(0), Some(1), None, None]
        );
        // Two optimal matchings of cost 2 (diagonal and anti-diagonal): rows in order, each
        // taking the lowest free column, give the diagonal; and the answer never changes.
        let cost = array![[1.0, 1.0, 5.0], [1.0, 1.0, 5.0], [5.0, 5.0, 0.0]];
        let first = min_cost_assignment(cost.view())?;
        assert_eq!(first, vec![Some(0), Some(1), Some(2)]);
        for _ in 0..3 {
            assert_eq!(min_cost_assignment(cost.view())?, first);
        }
        Ok(())
    }

    #[test]
    fn empty_matrices_match_nothing() -> TestResult {
        assert_eq!(min_cost_assignment(Array2::zeros((0, 3)).view())?, vec![]);
        assert_eq!(
            min_cost_assignment(Array2::zeros((2, 0)).view())?,
            vec![None, None]
        );
        Ok(())
    }

    #[test]
    fn a_non_finite_cost_is_an_error_naming_its_cell() {
        let cost = array![[1.0, 2.0], [3.0, f64::INFINITY]];
        let err = min_cost_assignment(cost.view());
        assert_eq!(
            err,
            Err(AssignmentError::NonFiniteCost {
                row: 1,
                column: 1,
                value: f64::INFINITY
            })
        );
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(message.contains("row 1, column 1"), "{message}");
        assert!(matches!(
            min_cost_assignment(array![[f64::NAN]].view()),
            Err(AssignmentError::NonFiniteCost {
                row: 0,
                column: 0,
                ..
            })
        ));
    }
}
