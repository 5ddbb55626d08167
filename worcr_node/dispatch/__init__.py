"""Smart dispatch: tag rules, fairness between tenants, the pick, the policy, explain."""
