-- Whether a refused event's dead letter is still to be acknowledged by the route's dead-letter
-- topic. The route resumes a partition at its oldest pending refusal, so a crash (or a route
-- with no dead-letter topic yet) between this transaction and the dead letter's acknowledgement
-- sends it again instead of leaving it only here. Rows from before this column count as sent.
ALTER TABLE herald_rejections ADD COLUMN IF NOT EXISTS dead_letter_pending boolean NOT NULL DEFAULT false;
