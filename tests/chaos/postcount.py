"""The table in which the chaos suite's workers count post-meeting runs. Kept apart from
`poststep` so that the test process can read it without registering the step in itself (the step
belongs in the workers only; registered here, it would run in later tests whose database lacks
the table)."""

TABLE = "chaos_post_meeting_run"
CREATE_SQL = (f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, meeting_id bigint NOT NULL, "
              "pid integer NOT NULL, ran_at timestamptz NOT NULL DEFAULT now())")
