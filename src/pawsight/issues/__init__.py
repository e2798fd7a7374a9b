"""Messy data, found before training: likely wrong labels, pictures of no class, bad pictures, copies and
leaks (`pawsight data issues`), and the way back into training (`train --exclude`). Nothing here moves,
renames or deletes a user's picture."""
