"""Safety: SafeEdit-format data, the safety judge and SafeEdit's metrics."""
