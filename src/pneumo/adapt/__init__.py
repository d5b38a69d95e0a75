"""Site adaptation (`pneumo adapt`): refit calibration, threshold and a REFER band on a site's sample."""
