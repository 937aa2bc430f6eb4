-- Ours: a client template can opt in to HTML-escaping its context values (issue 8). The
-- original renders with autoescape off, so the default keeps its output.
ALTER TABLE email_templates ADD COLUMN autoescape boolean NOT NULL DEFAULT false;
